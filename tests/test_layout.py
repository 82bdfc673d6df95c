"""The package's import graph, read from the code: no cycles, no upward imports;
and no function longer than MAX_FUNCTION_LINES.

Every `import` counts, lazy ones inside functions included, so an import
cycle cannot hide behind a function-level import.
"""

import ast
import os

from helpers import ROOT

PACKAGE = 'resnet_jax'
# Lowest first: a module may import its own layer or lower ones, never higher.
LAYERS = (
  (
    'resnet_jax.errors',
    'resnet_jax.cpu_devices',
    'resnet_jax.cpu_memory',
    'resnet_jax.cli',
    'resnet_jax.progress',
    'resnet_jax.workdir_lock',
    'resnet_jax.paths',
    'resnet_jax.orbax_quiet',
  ),
  ('resnet_jax.models',),
  ('resnet_jax.data',),
  (
    'resnet_jax.config_lib',
    'resnet_jax.config_validation',
    'resnet_jax.distributed',
    'resnet_jax.experiment',
    'resnet_jax.run_record',
  ),
  ('resnet_jax.checkpointing', 'resnet_jax.workdir_files', 'resnet_jax.trained_workdir'),
  ('resnet_jax.evaluation', 'resnet_jax.prediction', 'resnet_jax.weights'),
  ('resnet_jax.training',),
  ('resnet_jax.research',),
  ('resnet_jax.tools', 'resnet_jax.main', 'resnet_jax.predict', 'resnet_jax.config_from_workdir'),
)


def _modules() -> dict[str, str]:
  """Module name -> file, for every module of the package."""
  out = {}
  for directory, _, files in os.walk(os.path.join(ROOT, PACKAGE)):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(directory, name)
        parts = os.path.relpath(path, ROOT)[: -len('.py')].split(os.sep)
        if parts[-1] == '__init__':
          parts = parts[:-1]
        out['.'.join(parts)] = path
  return out


def import_graph() -> dict[str, set[str]]:
  """Module -> the package modules it imports (anywhere in its code)."""
  modules = _modules()
  graph = {}
  for module, path in modules.items():
    targets = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
      if isinstance(node, ast.Import):
        targets.update(a.name for a in node.names if a.name.split('.')[0] == PACKAGE)
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        if node.module.split('.')[0] != PACKAGE:
          continue
        for alias in node.names:  # `from pkg import submodule` imports the submodule.
          sub = f'{node.module}.{alias.name}'
          targets.add(sub if sub in modules else node.module)
    graph[module] = {t for t in targets if t in modules and t != module}
  return graph


def _layer(module: str) -> int:
  if module == PACKAGE:  # The public API (`resnet_jax/__init__.py`) re-exports every layer.
    return len(LAYERS)
  for i, prefixes in enumerate(LAYERS):
    if any(module == p or module.startswith(p + '.') for p in prefixes):
      return i
  raise AssertionError(f'{module} is in no layer of LAYERS')


def _cycle(graph) -> list[str] | None:
  state, stack = {}, []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for target in sorted(graph[node]):
      if state.get(target) == 'open':
        return stack[stack.index(target) :] + [target]
      if target not in state and (found := visit(target)):
        return found
    state[node] = 'done'
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state and (found := visit(node)):
      return found
  return None


def test_the_graph_sees_lazy_imports():
  graph = import_graph()
  assert 'resnet_jax.training.loop' in graph['resnet_jax.main']  # Imported inside main().
  assert _cycle({'a': {'b'}, 'b': {'a'}}) == ['a', 'b', 'a']  # The check can fail.


def test_no_import_cycles():
  assert _cycle(import_graph()) is None


def test_no_module_imports_a_higher_layer():
  upward = [
    f'{a} -> {b}'
    for a, targets in sorted(import_graph().items())
    for b in sorted(targets)
    if _layer(b) > _layer(a)
  ]
  assert not upward, upward


MAX_FUNCTION_LINES = 60
# (file, function) allowed to be longer: the config builders, flat lists of
# the recipe's fields that read best in one place.
LONG_FUNCTIONS_ALLOWED = {
  ('resnet_jax/config_lib.py', '_model_options'),
  ('resnet_jax/config_lib.py', '_common'),
  ('resnet_jax/config_lib.py', 'cifar10'),
  ('resnet_jax/config_lib.py', 'imagenet'),
  ('resnet_jax/config_lib.py', 'imagenette'),
}


def long_functions(source: str, path: str) -> list[str]:
  """`path:line name (N lines)` of each function in `source` (methods, nested
  and async ones included) longer than MAX_FUNCTION_LINES, from its `def` to
  its last line, unless LONG_FUNCTIONS_ALLOWED names it."""
  out = []
  for node in ast.walk(ast.parse(source, path)):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      lines = node.end_lineno - node.lineno + 1
      if lines > MAX_FUNCTION_LINES and (path, node.name) not in LONG_FUNCTIONS_ALLOWED:
        out.append(f'{path}:{node.lineno} {node.name} ({lines} lines)')
  return out


def test_the_length_check_sees_methods_and_async_functions():
  body = ''.join(f'    x = {i}\n' for i in range(MAX_FUNCTION_LINES - 1))
  source = f'class A:\n  async def long(self):\n{body}    x = 0\n  def short(self):\n{body}'
  assert long_functions(source, 'a.py') == [f'a.py:2 long ({MAX_FUNCTION_LINES + 1} lines)']


def test_no_function_is_longer_than_the_limit():
  found = []
  for path in sorted(_modules().values()):
    found += long_functions(open(path).read(), os.path.relpath(path, ROOT).replace(os.sep, '/'))
  assert not found, found
