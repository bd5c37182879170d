"""Fine-tuning on one MD17-family molecule with Frad's protocol (Feng et al., ICML 2023).

  --config=experiments/configs/finetune_md17_frad.py         the protocol below
  --config=experiments/configs/finetune_md17_frad.py:quick   2 CPU cores, minutes
  --config=experiments/configs/finetune_md17_frad.py:tiny    seconds; used by the tests

The 'frad' protocol: 9,500 training / 500 validation frames where the file has them (rMD17's split
files hold 1,000: then 95 % / 5 % of the frames not kept for testing, logged); batch 80; the same
6 x 128 ET and EquivariantScalar head as finetune_md17.py; MSE with energy weight 0.2 and force
weight 0.8 (no energy-loss smoothing) plus Coord's regulariser (weight 0.1, σ = 0.005 Å, the
pretraining's noise normaliser; energies and forces predicted at the displaced input); AdamW lr
1e-3, 1,000 warm-up steps, cosine decay over the run; early stopping after 30 evaluations.
``model.encoder.vector_cutoff`` is True as in finetune_md17.py (a potential continuous at the
cutoff); Frad's ET (torchmd-net 0.x) has no such option: --config.model.encoder.vector_cutoff=False
is its function.
Data options, units and --config.pretrained: finetune_md17.py.
"""

from experiments.configs import common, finetune_md17

SIZES = common.sizes(
    finetune_md17.SIZES,
    tiny=dict(data=dict(num_train=16, num_val=8)),
)


def get_config(size=None):
    c = finetune_md17.base_config()
    c.update(num_steps=100_000, batch_size=80, eval_every=500, checkpoint_every=500)
    c.early_stopping.patience = 30
    c.data.update(num_train=9500, num_val=500, shrink_split=True)
    c.model.denoise_head = True
    c.loss.update(denoise_weight=0.1, denoise_sigma=0.005)
    c.optim.update(learning_rate=1e-3, warmup_steps=1000)
    return common.resize(c, size, SIZES)
