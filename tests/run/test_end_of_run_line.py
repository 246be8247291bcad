"""The line printed between the last epoch and the export (issue 13, part 5): the final
metric and where the export goes, so a silent end is not taken for a hang."""

from dualssl_tf.run import trainer


def test_end_of_run_line_names_the_metric_and_the_export():
    line = trainer.end_of_run_line({"loss": 0.052776, "probe_test_acc": 0.8125,
                                    "best_corr/1": 0.9}, "/r/saved_model")
    assert line == ("Training done (loss 0.05278, probe_test_acc 0.8125); exporting the "
                    "encoder to /r/saved_model ...")
    assert "\n" not in line
    assert "no metrics" in trainer.end_of_run_line({}, "x")
