"""georecon_jax/tasks/property_data.py: a run's label comes from its data, not from a default."""

from conftest import md17_config
from georecon_jax.tasks import property_data


def test_run_label_comes_from_the_file_or_the_name():
    run_label = property_data.run_label
    assert run_label(md17_config()) == "aspirin"
    assert run_label(md17_config(train_file="/data/3BPA/train_300K.xyz")) == "3BPA/train_300K"
    assert run_label(md17_config(train_file="train_300K.xyz")) == "train_300K"
    assert run_label(md17_config(train_file="/data/3BPA/train_300K.xyz", name="3BPA 300 K")) == "3BPA 300 K"
    from experiments.configs import finetune_qm9

    qm9 = finetune_qm9.get_config("tiny")
    qm9.target = "gap"
    assert run_label(qm9) == "gap"
