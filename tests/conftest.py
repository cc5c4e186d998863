"""Strict test settings (exact matmuls, no silent rank promotion) and the test tiers.

The fast tier is ``python -m pytest -q -n 2 -m "not slow"``; the full suite is
``python -m pytest -q -n 2`` (tests/README.md). A test is in the slow tier when it
carries ``@pytest.mark.slow`` itself, or when ``SLOW`` or ``FAST_CASES`` below put it
there: that table is the one place to read which expensive tests stay out of the fast
tier, and which few cases of each grid stay in it.
"""

import os

# Simulated devices for the sharding tests must be set before jax initialises; added
# to (not replaced by) any XLA_FLAGS the environment already has.
_flags = os.environ.get("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=8".strip()
# The CLI turns JAX's persistent compilation cache on; tests leave the user's alone.
os.environ["CNN_JAX_COMPILATION_CACHE"] = "off"

import importlib.util  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
jax.config.update("jax_numpy_rank_promotion", "raise")

# PyTorch CPU is the oracle of most op tests. Where it is missing the tests that need it
# skip (pytest.importorskip), but only where that is asked for: .ci/run's newest-Python
# leg, for which PyTorch 2.13.0 exists only as a CUDA build of several GB. Anywhere else
# a missing torch is an error, so that no skip is ever mistaken for a pass.
WITHOUT_TORCH = os.environ.get("CNN_JAX_TESTS_WITHOUT_TORCH") == "1"


def pytest_configure(config):
    if importlib.util.find_spec("torch") is None and not WITHOUT_TORCH:
        raise pytest.UsageError(
            "the tests compare against PyTorch's CPU build: pip install torch==2.13.0 "
            "(or set CNN_JAX_TESTS_WITHOUT_TORCH=1 to skip the tests that need it)"
        )


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """With CNN_JAX_TESTS_WITHOUT_TORCH=1, a test file that cannot import torch is skipped,
    naming the reason (as pytest.importorskip would), instead of failing to collect."""
    report = yield
    if (
        WITHOUT_TORCH
        and report.failed
        and isinstance(collector, pytest.Module)
        and "No module named 'torch'" in str(report.longrepr)
    ):
        report.outcome = "skipped"
        report.longrepr = (
            str(collector.path),
            0,
            "Skipped: its oracle is PyTorch, not installed on this leg "
            "(CNN_JAX_TESTS_WITHOUT_TORCH=1)",
        )
    return report


# Whole files, or file::test (every case of it), in the slow tier: subprocesses (each
# pays the jax import and its compiles), several processes, real training runs, long
# grids. Each file keeps at least one fast test except the two multi-process files,
# whose every test starts several processes.
SLOW = {
    "test_multiprocess.py",
    "test_multiprocess_signals.py",
    # Signals: the fast tier keeps test_sigint_while_jax_is_imported.
    "test_signals.py::test_second_sigint_during_the_interrupt_save",
    "test_signals.py::test_sigint_before_the_training_loop",
    "test_signals.py::test_sigint_mid_epoch_saves_that_step_and_resumes_exactly",
    "test_signals.py::test_sigint_while_a_checkpoint_is_committed",
    "test_signals.py::test_signal_while_the_final_checkpoint_is_committed",
    "test_signals.py::test_sigterm_after_an_epochs_last_step_resumes_exactly",
    "test_readme.py::test_cli_lines_run",
    "test_benchmarks.py::test_quick_run",
    "test_benchmarks.py::test_cnn_jax_bench_help_imports_no_jax",
    "test_benchmarks.py::test_cnn_jax_bench_outside_a_checkout_names_python_m_benchmarks",
    # The CLI: the fast tier keeps the in-process error and help tests.
    "test_cli.py::test_train_writes_every_output",
    "test_cli.py::test_evaluate_equals_a_numpy_computation_on_the_restored_model",
    "test_cli.py::test_predict_prints_softmax_of_the_eval_mode_model",
    "test_cli.py::test_predict_pads_the_last_batch_and_compiles_once",
    "test_cli.py::test_resume_takes_the_config_from_run_json_and_continues",
    "test_cli.py::test_resume_of_a_finished_run_leaves_it_untouched",
    "test_cli.py::test_resume_refuses_a_flag_that_would_make_another_run",
    "test_cli.py::test_sigint_saves_exits_130_and_resumes_identically",
    "test_cli.py::test_a_registered_model_trains_from_the_cli",
    "test_cli.py::test_segmentation_end_to_end_with_a_numpy_oracle",
    "test_cli.py::test_a_small_folder_data_set_names_the_fix_and_leaves_nothing",
    "test_cli.py::test_resume_without_a_checkpoint_says_so_even_when_quiet",
    "test_cli.py::test_a_bug_inside_the_library_keeps_its_traceback",
    "test_cli.py::test_help_imports_no_jax",
    # Streaming: the fast tier keeps the pure plan, crop and error tests.
    "test_stream.py::test_a_bad_image_stops_the_run_naming_it_or_is_skipped_and_counted",
    "test_stream.py::test_a_dead_worker_ends_the_run_with_a_clear_error",
    "test_stream.py::test_a_signal_while_the_input_is_late_stops_the_wait",
    "test_stream.py::test_fit_evaluate_and_predict_on_streams",
    "test_stream.py::test_resume_refuses_a_folder_whose_files_changed",
    "test_stream.py::test_sigint_in_a_streamed_run_resumes_with_identical_batches",
    "test_stream.py::test_the_imagenet_recipe_decodes_rgb_crops",
    # Training: the fast tier keeps test_one_step_smoke_on_fake_data and the config tests.
    "test_train.py::test_training_learns_and_batchnorm_statistics_move",
    "test_train.py::test_bfloat16_compute_keeps_float32_params_and_optimizer_state",
    "test_train.py::test_adamw_schedule_and_decay_match_hand_derivation",
    "test_train.py::test_outputs_metrics_summary_and_plots",
    "test_train.py::test_train_step_traced_once_for_all_batches_and_epochs",
    "test_train.py::test_load_run_without_a_checkpoint_says_so",
    "test_train.py::test_progress_bar_only_on_a_terminal_and_not_quiet",
    "test_train.py::test_sgd_constant_schedule_matches_hand_derivation",
    "test_checkpoint.py::test_interrupt_then_resume_equals_uninterrupted",
    "test_checkpoint.py::test_non_finite_loss_stops_and_keeps_last_good_checkpoint",
    "test_checkpoint.py::test_fit_refuses_damaged_or_foreign_checkpoint_on_resume",
    "test_checkpoint.py::test_a_write_cut_off_never_shows_as_a_checkpoint",
    "test_sharding.py::test_sharded_step_equals_single_device_step",
    "test_sharding.py::test_same_seed_same_run_on_1_and_8_devices_with_augmentation",
    # Export: the fast tier keeps one ONNX and one StableHLO round trip (FAST_CASES).
    "test_export.py::test_cli_exports_a_run_in_every_format",
    "test_export.py::test_stablehlo_runs_in_a_process_without_cnn_jax",
    "test_export.py::test_every_zoo_model_exports_to_onnx",
    "test_export.py::test_onnx_fixed_batch",
    "test_export.py::test_stablehlo_fixed_batch_and_load_helper",
    "test_export.py::test_export_torch_writes_pt_and_safetensors",
    "test_interpret.py::test_integrated_gradients_completeness",
    "test_interpret.py::test_smooth_grad_averages_noisy_gradients",
    "test_torch_import.py::test_full_size_torchvision_state_dicts_load",
    "test_torch_import.py::test_zoo_logits_match_torch",
    "test_torch_import.py::test_mobilenet_v2_logits_match_torch",
    "test_torch_import.py::test_unet_logits_match_torch",
    "test_models.py::test_train_step_lowers_the_loss",
    "test_models.py::test_mixed_precision_bf16_compute_f32_params",
    "test_seeds.py::test_learn_edge_kernel_back_by_gradient_descent",
    "test_data.py::test_the_train_step_never_flips_grey_images_and_augment_off_is_the_identity",
    "test_models.py::test_receptive_fields_of_the_new_models_by_hand",
}

# Grids: file::test -> how many of its first cases stay in the fast tier (one per op
# family or layout is enough there); the other cases are slow. Pure-Python error grids
# (constructor errors and the like) are cheap and stay fast whole.
FAST_CASES = {
    "test_fuzz.py::test_fuzz_config_matches_torch": 24,
    "test_readme.py::test_python_blocks_run": 1,
    "test_examples.py::test_example_runs_and_shows_its_claim": 0,
    "test_benchmarks.py::test_depthwise_prototype_equals_cnn_jax_values_and_gradients": 1,
    "test_cli.py::test_summary_of_every_registered_model": 2,
    "test_export.py::test_onnx_round_trip_at_batch_1_and_3": 1,
    "test_export.py::test_stablehlo_round_trip_at_batch_1_and_3": 1,
    "test_export.py::test_load_of_save_is_the_identity": 1,
    "test_export.py::test_pytorch_loads_the_exported_state_dict": 1,
    "test_torch_import.py::test_resnet_logits_match_torch": 1,
    "test_models.py::test_parameter_counts": 3,
    "test_models.py::test_forward_shapes": 3,
    "test_summary.py::test_published_totals": 2,
    "test_blocks.py::test_block_eval_matches_torch": 2,
    "test_conv.py::test_conv_matches_torch_values_and_grads": 2,
    "test_conv.py::test_check_grads_float64_default_tolerances": 1,
    "test_conv.py::test_conv_input_and_kernel_grad_equal_vjp_and_torch": 1,
    "test_conv.py::test_windows_reading_padding_or_dilated_over_one_output_are_simplified_exactly": 1,
    "test_conv_cpu_path.py::test_im2col_matches_torch_values_and_grads": 2,
    "test_conv_cpu_path.py::test_conv_both_paths_match_torch": 2,
    "test_conv_transpose.py::test_conv_transpose_matches_torch_values_and_grads": 2,
    "test_conv_transpose.py::test_check_grads_float64_default_tolerances": 1,
    "test_resample.py::test_upsample_matches_torch": 1,
    "test_pool_max.py::test_max_and_min_pool_match_torch": 1,
    "test_pool_avg.py::test_nan_and_inf_propagate_like_torch": 2,
    "test_nn.py::test_conv_layer_equals_op_and_torch": 2,
    "test_nn.py::test_conv_transpose_layer_equals_op_and_torch": 2,
    "test_nn.py::test_init_matches_torch_bounds_and_shapes": 3,
    "test_adaptive.py::test_adaptive_matches_torch": 2,
    "test_shape.py::test_sizes_beyond_int32_raise_value_error": 4,
}


def pytest_collection_modifyitems(config, items):
    seen = {}
    for item in items:
        file = os.path.basename(item.path)
        test = f"{file}::{item.originalname}"
        if file in SLOW or test in SLOW:
            item.add_marker(pytest.mark.slow)
        elif test in FAST_CASES:
            seen[test] = seen.get(test, 0) + 1
            if seen[test] > FAST_CASES[test]:
                item.add_marker(pytest.mark.slow)


@pytest.fixture
def rng():
    """A numpy Generator with a fixed seed, fresh for every test."""
    return np.random.default_rng(0)
