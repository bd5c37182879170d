# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # GeoRecon on a Colab TPU: pretrain, fine-tune HOMO, evaluate
#
# This notebook installs the TPU build of the JAX version `requirements.txt` pins, clones the
# repository, pretrains the quick GeoRecon model on QM9 (shipped in the `qm9pack` package, no
# download), fine-tunes the QM9 HOMO energy from it, evaluates on the test split, shows the
# learning curves and the parity plot, and copies the fine-tuned run to Google Drive when asked.
#
# **Runtime.** *Runtime → Change runtime type → TPU* (v5e-1 is the free tier's: one TPU v5e chip,
# `jax.devices()` lists one device). Every command is data-parallel over all local devices: on a
# v5e-8 or v6e-8 (8 chips) the same cells split each batch over 8 devices, so the batch size must
# divide by 8 (the quick configs use 32); v6e chips have twice v5e's memory (32 vs 16 GiB) and run
# the paper-scale configs (`SIZE = ""`) with the batch sizes of the paper. Nothing else changes.
#
# **Precision.** TPUs multiply float32 matrices in bfloat16 passes unless told otherwise; the
# configs' `matmul_precision="highest"` keeps float32 (set `"default"` or `"bf16"` to trade accuracy
# for speed). A persistent compilation cache on Drive or `/content` saves the compile time of
# later runs.
#
# **Status.** This notebook has not yet been run on a real TPU by this project (its machines have
# no accelerator): the test suite executes it on CPU in a test mode (`GEORECON_NOTEBOOK_TEST=1`:
# the tiny configs, no install, no clone).

# %%
import os
import subprocess
import sys

TEST = os.environ.get("GEORECON_NOTEBOOK_TEST") == "1"  # CPU test mode (tests/test_notebook.py)
SIZE = "tiny" if TEST else "quick"  # "quick": minutes on a TPU; "": paper scale
REPO_URL = ""  # @param {type:"string"} the git URL of this repository
MOUNT_DRIVE = False  # @param {type:"boolean"} copy the fine-tuned run to Google Drive
WORK = os.environ.get("GEORECON_NOTEBOOK_WORKDIR", "/content/runs")
os.makedirs(WORK, exist_ok=True)


def sh(*cmd):
    """Runs a command, printing its output; fails the cell when the command fails."""
    print("$", " ".join(cmd))
    subprocess.run(cmd, check=True)


# %% [markdown]
# ## Install (skipped in test mode)
#
# Clone, install the pinned requirements and the package, then the TPU build of the same JAX
# version (`requirements.txt` pins the CPU wheels). Run this cell before anything imports JAX.

# %%
if not TEST:
    if not os.path.isdir("/content/georecon_jax"):
        if not REPO_URL:
            raise ValueError("set REPO_URL (the form field above) to the git URL of georecon_jax")
        sh("git", "clone", "--depth", "1", REPO_URL, "/content/georecon_jax")
    os.chdir("/content/georecon_jax")
    sh(sys.executable, "-m", "pip", "install", "-q", "-r", "requirements.txt", "-e", ".")
    sh(sys.executable, "-m", "pip", "install", "-q", "jax[tpu]==0.10.2")
    sys.path.insert(0, os.getcwd())

# %%
import jax  # noqa: E402

print("JAX", jax.__version__, "on", jax.devices())

# %% [markdown]
# ## Pretrain GeoRecon (the quick model: 3 layers × 64 features, 600 steps)

# %%
from experiments import cli  # noqa: E402
from experiments.configs import finetune_qm9, georecon  # noqa: E402
from georecon_jax.tasks import finetune, pretrain  # noqa: E402

cli.setup_logging()
pre_config = georecon.get_config(SIZE)
pre_config.matmul_precision = "highest"
if not TEST:  # the tests keep their own cache ($JAX_COMPILATION_CACHE_DIR)
    pre_config.compilation_cache_dir = os.path.join(WORK, "xla_cache")
if TEST:  # no reconstruction from z at the end, no validation, one checkpoint
    pre_config.update(eval_every=0, checkpoint_every=pre_config.num_steps)
    pre_config.objective.num_recon_molecules = 0
cli.apply_accelerator_settings(pre_config)
pre_summary = pretrain.run(pre_config, os.path.join(WORK, "georecon"))
print("training loss", pre_summary["first_train_loss"], "->", pre_summary["final_train_loss"])

# %% [markdown]
# ## Fine-tune QM9 HOMO from the pretrained encoder, evaluate on the test split

# %%
ft_config = finetune_qm9.get_config(SIZE)
ft_config.target = "homo"
ft_config.pretrained = os.path.join(WORK, "georecon")
ft_config.compilation_cache_dir = pre_config.compilation_cache_dir
ft_workdir = os.path.join(WORK, "ft_homo")
ft_summary = finetune.run(ft_config, ft_workdir)  # ends with the test-set evaluation
print({k: f"{v['value']:.4g} {v['unit']}" for k, v in ft_summary["test"].items()})

# %% [markdown]
# ## Learning curves and the parity plot

# %%
from IPython.display import Image, Markdown, display  # noqa: E402

for path in (
    os.path.join(WORK, "georecon", "learning_curves.png"),
    os.path.join(ft_workdir, "learning_curves.png"),
    os.path.join(ft_workdir, "parity_homo.png"),
):
    print(path)
    display(Image(filename=path))
with open(os.path.join(ft_workdir, "results.md")) as f:
    display(Markdown(f.read()))

# %% [markdown]
# ## Save to Google Drive
#
# The fine-tuned run (checkpoints, plots, results) and its weights as one `.npz`
# (`experiments.export`: no orbax needed to load it, `georecon_jax.load_model("homo.npz")`).

# %%
import shutil  # noqa: E402

from georecon_jax.tasks.inference import export_model  # noqa: E402

export_model(ft_workdir, os.path.join(WORK, "homo.npz"))
if MOUNT_DRIVE and not TEST:
    from google.colab import drive

    drive.mount("/content/drive")
if os.path.isdir("/content/drive/MyDrive"):
    target = "/content/drive/MyDrive/georecon_jax"
    shutil.copytree(ft_workdir, os.path.join(target, "ft_homo"), dirs_exist_ok=True)
    shutil.copy(os.path.join(WORK, "homo.npz"), target)
    print("saved to", target)
else:
    print("Drive is not mounted: the run stays in", WORK)
