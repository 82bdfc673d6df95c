"""A workdir's saved config as a config file: `--config=resnet_jax/config_from_workdir.py:WORKDIR`.

`python -m resnet_jax.main --mode=evaluate --workdir=DIR` without `--config`
loads DIR's config through this file, so `--config.*` overrides apply to it
as to any config file's (e.g. `--config.input.dataset`, `--config.eval.protocol`).
"""

from resnet_jax import workdir_files


def get_config(workdir: str):
  return workdir_files.read_config(workdir)
