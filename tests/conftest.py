import atexit
import os
import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Hermetic runs: the persistent kernel cache (and every subprocess a test starts) uses a
# temporary folder for the session, never the user's cache; removed at exit. Writing entries
# is off outside tests/test_kernel_cache.py (which turns it on): exporting each kernel's
# library costs about as much as compiling it (test_pool.py: 29 s -> 49 s with it on).
_KERNEL_CACHE = tempfile.mkdtemp(prefix="convforge-test-cache-")
os.environ["CONVFORGE_CACHE_DIR"] = _KERNEL_CACHE
os.environ["CONVFORGE_CACHE"] = "0"
os.environ.pop("CONVFORGE_CACHE_SIZE", None)
atexit.register(shutil.rmtree, _KERNEL_CACHE, ignore_errors=True)
# A symbolic batch compiles one function per batch bucket (1, 2, 4, 8 by default: about 3x the
# compile time); outside tests/test_dynamic_batch.py one bucket (batch 1, larger batches as
# several batch-1 calls) keeps the run's time.
os.environ["CONVFORGE_BATCH_BUCKETS"] = "1"
# Tests count compiled kernels with build.cache_size(): the in-process LRU must not drop one
# meanwhile (tests/test_kernel_cache.py sets its own bound).
os.environ["CONVFORGE_MEMORY_CACHE"] = "1000000"
# A schedule rule that raises is a bug: an error in tests (users get a warning and the
# generic schedule; convforge/schedules/rules.py). Subprocesses inherit it.
os.environ["CONVFORGE_STRICT_SCHEDULES"] = "1"

# Default run: >= 200 examples per property family; --slow: thousands.
settings.register_profile(
    "default",
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "slow",
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="run slow tests and thousands of examples")


def pytest_configure(config):
    settings.load_profile(
        "slow" if config.getoption("--slow") else os.environ.get("HYPOTHESIS_PROFILE", "default")
    )


#: The fast tier, ``pytest -m "not compile"`` (shapes, fusion planning, CLI parsing, error
#: tables, tuning-database and graph checks; under a minute): module -> the test functions
#: that compile no kernel or model and start no interpreter ("*": all of them). Every other test is marked ``compile``
#: here, so a new test starts in the full run only; list it here when it compiles nothing (the
#: guard below fails it if it calls ``tvm.compile``, and a test that compiles in a subprocess
#: belongs in the full run too).
FAST_TESTS: dict[str, set[str] | str] = {
    "test_atomic_write": {
        "test_bytes_and_text_are_written_whole",
        "test_an_existing_file_is_replaced_whole",
        "test_a_callable_fills_a_temporary_file_of_the_given_suffix",
        "test_a_writer_that_recreates_its_file_is_published",
        "test_a_failing_writer_leaves_no_file_and_no_temporary",
        "test_a_writer_that_removes_its_temporary_then_fails_raises_its_own_error",
        "test_a_missing_folder_is_an_error_and_creates_nothing",
        "test_the_mode_follows_the_umask",
        "test_replacing_a_file_gives_the_umask_mode_not_the_old_one",
    },
    "test_benchmarks": {
        "test_dense_flops_follow_the_direct_algorithm",
        "test_head_graph_matches_numpy",
        "test_resize_conv_graph_matches_numpy",
        "test_runner_rejects_unknown_workload",
        "test_suite_names_are_unique_and_ops_known",
    },
    "test_qconv": {
        "test_float32_requantization_against_exact_rounding",
        "test_bad_arguments_are_refused_naming_them",
        "test_a_bad_activation_is_refused",
        "test_conv_integer_refusals",
        "test_the_qdq_fusion_takes_exactly_what_it_can_compute",
        "test_the_qdq_fusion_keeps_a_dequantize_read_elsewhere",
        "test_quantized_outputs_are_checked_within_one_step",
    },
    "test_schedule_rules": {
        "test_the_test_run_is_strict",
        "test_a_broken_rule_raises_in_strict_mode_naming_rule_and_function",
        "test_a_broken_block_rule_raises_in_strict_mode_naming_the_block",
        "test_a_broken_cuda_rule_raises_in_strict_mode_and_falls_back_to_dlight_otherwise",
        "test_a_bad_strict_setting_is_refused",
        "test_the_first_rule_that_applies_is_the_one_used",
        "test_no_block_name_is_a_string_literal_in_ops_or_schedules",
        "test_numbered_block_names",
    },
    "test_workloads": {
        "test_every_workload_is_named_once_with_a_known_op_and_a_set",
        "test_shapes_are_consistent_and_macs_follow_the_direct_algorithm",
        "test_the_lists_are_the_registry_sets",
        "test_the_benchmark_and_gpu_suites_share_their_common_workloads",
        "test_unknown_op_and_set_are_refused_naming_them",
        "test_arrays_have_the_declared_shapes_and_dtype",
    },
    "test_cli": {
        "test_bad_input_exits_2_with_a_clear_message",
        "test_help",
    },
    "test_compile_model": {
        "test_check_model_rejects_bad_input_before_compiling",
        "test_checkerboard_measure_separates_transposed_from_resize_convolution",
        "test_elementwise_rule_parallelizes_and_vectorizes_and_declines_reductions",
        "test_scope_warning_filter_keeps_every_other_line",
        "test_strided_conv_transpose_nodes_take_the_sub_pixel_computation",
        "test_top1_agreement_of_classifier_outputs",
    },
    "test_contract": {
        "test_compile_model_input_shapes_take_numpy_integers_and_refuse_fractions",
        "test_geometry_of_numpy_integers_is_the_geometry_of_ints",
    },
    "test_compile_time": {
        "test_profile_table_rows_add_up_to_the_total",
    },
    "test_conv_pool_fusion": {
        "test_windows_inside",
        "test_winograd_pool_runs_in_the_tasks_that_write_its_tiles",
    },
    "test_dtypes": {
        "test_onnxruntime_cpu_dtypes",
    },
    "test_errors": {
        "test_bad_input_raises_value_error_before_compiling",
    },
    "test_export_forms": {
        "test_exporters_refuse_forms_that_do_not_state_the_geometry",
    },
    "test_gpu_codegen": {
        "test_meta_schedule_cuda_candidates_build_for_sm90",
        "test_target_key_names_the_architecture",
    },
    "test_heads": {
        "test_heads_reject_bad_arguments",
    },
    "test_nonfinite": {
        "test_algorithm_refusals",
    },
    "test_onnx_graph": {
        "test_batch_zero_gives_empty_outputs_as_onnxruntime",
        "test_check_model_refuses_another_dtype_kind",
        "test_converter_failure_is_one_line_naming_the_node",
        "test_empty_non_batch_dimension_refused",
        "test_fold_static_shapes_removes_shape_arithmetic",
        "test_scalar_input",
        "test_wrong_dtype_refused_like_onnxruntime",
    },
    "test_onnx_pool_resize": {
        "test_refusals_name_the_op_and_the_attribute",
    },
    "test_lazy_import": {
        "test_every_public_name_resolves_to_its_modules_object",
        "test_unknown_name_is_an_attribute_error",
    },
    "test_packaging": {
        "test_version_comes_from_pyproject_only",
    },
    "test_pool": {
        "test_adaptive_cells_follow_pytorch",
        "test_pool_rejects_bad_arguments",
    },
    "test_resize": {
        "test_fast_path_is_selected_only_for_repeats",
        "test_output_size_is_floor_of_float32_scale",
        "test_resize_conv_rejects_bad_scale_before_compiling",
        "test_resize_geometry_rejects_bad_onnx_attributes",
        "test_resize_rejects_bad_arguments",
    },
    "test_schedules_cpu": {
        "test_avx512_tiles_differ_from_avx2",
        "test_channel_blocks_reject_bad_sizes",
        "test_grouped_and_1d_convolutions_keep_the_generic_computation",
        "test_long_pointwise_rows_are_computed_directly_on_avx512",
        "test_pointwise_time_tiles_leave_enough_tasks",
        "test_register_tile_fits_the_target",
        "test_schedule_rule_applies_to_every_dense_case",
        "test_short_reductions_take_at_most_two_channel_vectors",
    },
    "test_schedules_special": {
        "test_conv_transpose_selects_subpixel_for_strides_above_one",
        "test_subpixel_phases_blocked_for_dense_cpu_convolutions",
        "test_subpixel_skips_the_inserted_zeros",
    },
    "test_shapes": "*",
    "test_streaming": {
        "test_bad_arguments_raise_value_error_naming_the_rule",
    },
    "test_tuning_db": {
        "test_active_database_is_per_thread",
        "test_use_tuning_db_refuses_a_file",
    },
    "test_tuning_robust": {
        "test_a_file_left_seeded_without_records_resumes",
        "test_a_record_whose_trace_holds_an_index_map_round_trips",
        "test_progress_state_estimates_time_left_from_this_runs_candidates",
        "test_plain_progress_prints_flushed_lines_and_a_heartbeat",
    },
    "test_tuning_exchange": {
        "test_import_and_export_refuse_bad_directories",
        "test_match_cpu_uses_another_core_counts_record_and_says_so",
        "test_db_command_exports_and_imports",
        "test_the_match_mode_is_part_of_the_model_cache_key",
        "test_model_commands_take_tuning_match",
    },
    "test_targets": "*",
    "test_plan": {
        "test_registry_order_and_algorithm_filter",
        "test_constant_weight_and_stride_phases",
        "test_blocked_pack_is_the_blocked_weight",
        "test_pointwise_plans_reshape_and_subsample",
        "test_fused_pool_inside_the_kernel_where_the_plan_allows",
        "test_schedule_names_resolve_and_plans_are_cached",
        "test_dense_plan_packs_the_weight_for_the_kernel",
        "test_plan_module_holds_the_choice_functions",
        "test_plan_takes_a_target_dict_and_refuses_bad_arguments",
    },
    "test_winograd": {
        "test_chooser_keeps_the_direct_convolution_elsewhere",
        "test_input_transform_has_integer_entries",
        "test_matrices_compute_the_correlation",
        "test_phase_weight_array_holds_the_taps_of_each_phase",
        "test_transformed_weight_equals_g_w_gt",
        "test_winograd_refuses_strided_dilation",
    },
}


def _is_fast(item: pytest.Item) -> bool:
    fast = FAST_TESTS.get(item.module.__name__.rpartition(".")[2], ())
    return fast == "*" or getattr(item, "originalname", item.name) in fast


def pytest_collection_modifyitems(config, items):
    for item in items:
        if not _is_fast(item):
            item.add_marker(pytest.mark.compile)
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="opt-in: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_compile_unless_marked(request, monkeypatch):
    """A test not marked ``compile`` that calls ``tvm.compile`` fails at once (in this
    process; snippets run by tests/isolated.py are not watched): the fast tier stays fast."""
    if "compile" in request.keywords:
        return

    def refuse(*args, **kwargs):
        raise AssertionError(
            f"{request.node.nodeid} compiles: take it out of FAST_TESTS in tests/conftest.py"
        )

    import tvm

    monkeypatch.setattr(tvm, "compile", refuse)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty persistent cache folder of this test's own, the cache enabled and unbounded
    by the environment (the session turns it off: CONVFORGE_CACHE=0)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("CONVFORGE_CACHE_DIR", str(folder))
    monkeypatch.delenv("CONVFORGE_CACHE", raising=False)
    monkeypatch.delenv("CONVFORGE_CACHE_SIZE", raising=False)
    return folder
