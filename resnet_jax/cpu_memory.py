"""Transparent huge pages for XLA:CPU's buffers, on Linux CPU hosts.

Each call of a compiled step allocates its temporaries afresh (about 160 MB
per device for ResNet-20 at batch 128); in 4 KB pages that is tens of
thousands of page faults and TLB misses per step. glibc's malloc asks the
kernel for transparent huge pages (2 MB) when its tunable
`glibc.malloc.hugetlb=1` is set, which makes the CPU train step markedly
faster (docs/speed.md). glibc reads tunables only when a process starts, so a
command line (`python -m resnet_jax...`) that would run on the CPU starts
itself again once, at once, with the tunable added to `GLIBC_TUNABLES`. It
does not when `GLIBC_TUNABLES` already names `glibc.malloc.hugetlb` (set it to
0 to opt out), when the kernel has huge pages off, off glibc or Linux, on an
accelerator host, or when the package is imported rather than run.
"""

import os
import platform
import sys

from resnet_jax import cpu_devices

TUNABLE = 'glibc.malloc.hugetlb'
_THP_SETTING = '/sys/kernel/mm/transparent_hugepage/enabled'


def _huge_pages_available() -> bool:
  try:
    with open(_THP_SETTING) as f:
      return '[never]' not in f.read()
  except OSError:
    return False


def _run_as_command() -> bool:
  """Whether this process runs one of the package's modules as `python -m`."""
  spec = getattr(sys.modules.get('__main__'), '__spec__', None)
  return bool(spec and spec.name.startswith('resnet_jax.') and '-m' in sys.orig_argv)


def should_restart() -> bool:
  """Whether to start this command again with huge pages (see the module doc)."""
  return (
    sys.platform == 'linux'
    and platform.libc_ver()[0] == 'glibc'
    and TUNABLE not in os.environ.get('GLIBC_TUNABLES', '')
    and _huge_pages_available()
    and cpu_devices.accelerator() is None
    and _run_as_command()
  )


def restart_with_huge_pages():
  """Replaces this process by the same command with `glibc.malloc.hugetlb=1`,
  where `should_restart()`; returns otherwise."""
  if not should_restart():
    return
  tunables = os.environ.get('GLIBC_TUNABLES', '')
  os.environ['GLIBC_TUNABLES'] = f'{tunables}:{TUNABLE}=1' if tunables else f'{TUNABLE}=1'
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
