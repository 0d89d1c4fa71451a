#!/usr/bin/env python3
"""Fail when a notebook code cell mixes import statements with other code.

While building the docs (`nbdev_proc_nbs`, run by `nbdev_docs`) nbdev executes every exported cell and every
other cell that contains an import, out of context: code after an import that uses names from earlier cells
breaks the docs build (and slow code runs again). nbdev's maintainers ask for imports in cells of their own.

Rules, per code cell:
- a cell whose top-level statements are all imports is fine (comments, `#|` directives and blank lines are not
  statements; `from __future__ import ...` is an import). An import guarded by `try:` (fallbacks in the
  `except` part), by `if`, or by `with warnings.catch_warnings():` (plus `warnings.*` filter calls) counts as
  an import too;
- a cell with imports and any other top-level statement fails;
- an import inside a function or class body is the function's own business in exported cells; in any other
  cell it still makes nbdev run the whole cell, so there it fails like a top-level one;
- lines starting with `!` or `%` (shell and magics) are skipped before parsing; a cell that still does not
  parse is reported as a warning and skipped (nbdev does not execute such cells either);
- cells that call `nbdev_export()` (the usual `import nbdev; nbdev.nbdev_export()` footer) are skipped, as
  nbdev itself never executes them while building the docs.

Usage: python .ci/check_imports.py [NOTEBOOK_OR_FOLDER ...]   (default: the nbs_path of settings.ini, or nbs)
Exit status 1, with one line per offending cell (notebook, cell index, cell id), when any cell fails.
"""
import ast, configparser, json, re, sys
from pathlib import Path

IMPORTS = (ast.Import, ast.ImportFrom)
SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
ALWAYS_RUN = {'export', 'exports', 'exporti', 'exec_doc'}   # nbdev runs these cells whatever they hold
_re_directive = re.compile(r'^\s*#\|\s*([\w-]+)', re.M)


def _walk(node, into_scopes):
    "Like `ast.walk`, not descending into function/class bodies unless `into_scopes`."
    todo = [node]
    while todo:
        n = todo.pop()
        yield n
        for c in ast.iter_child_nodes(n):
            if into_scopes or not isinstance(c, SCOPES): todo.append(c)


def _is_warnings_call(s):
    return (isinstance(s, ast.Expr) and isinstance(s.value, ast.Call) and isinstance(s.value.func, ast.Attribute)
            and isinstance(s.value.func.value, ast.Name) and s.value.func.value.id == 'warnings')


def _fallback(s):
    "Statements allowed in the `except` part of a guarded import."
    if isinstance(s, (ast.Pass, ast.Raise)) or is_import(s): return True
    return isinstance(s, ast.Assign) and isinstance(s.value, ast.Constant)   # `x = None`


def is_import(s):
    "Is top-level statement `s` an import, or an import guarded by try/if/with warnings?"
    if isinstance(s, IMPORTS): return True
    body_ok = lambda b: b and all(isinstance(o, ast.Pass) or is_import(o) for o in b)
    if isinstance(s, ast.Try):
        return (body_ok(s.body) and all(_fallback(o) for h in s.handlers for o in h.body)
                and all(_fallback(o) for o in s.orelse + s.finalbody))
    if isinstance(s, ast.If): return body_ok(s.body) and (not s.orelse or body_ok(s.orelse))
    if isinstance(s, ast.With):
        return (any(is_import(o) for o in s.body) and all(is_import(o) or _is_warnings_call(o) for o in s.body))
    return False


def check_cell(src):
    "None if the cell is fine, else a short reason."
    if 'nbdev_export()' in src: return None
    code = '\n'.join('' if l.lstrip().startswith(('!', '%')) else l for l in src.splitlines())
    try: tree = ast.parse(code)
    except SyntaxError as e: return f'SKIP: does not parse ({e.msg}, line {e.lineno})'
    always_run = bool(set(_re_directive.findall(src)) & ALWAYS_RUN)
    imps = sorted((n for n in _walk(tree, into_scopes=not always_run) if isinstance(n, IMPORTS)), key=lambda n: n.lineno)
    if not imps: return None
    others = [s for s in tree.body if not is_import(s)]
    if not others: return None
    first = others[0]
    return (f'{len(imps)} import statement(s) (first on line {imps[0].lineno}) with other code '
            f'({type(first).__name__} on line {first.lineno})')


def notebooks(args):
    if not args:
        cfg = configparser.ConfigParser(); cfg.read('settings.ini')
        args = [cfg.get('DEFAULT', 'nbs_path', fallback='nbs')]
    for a in map(Path, args):
        if a.is_dir():
            yield from sorted(p for p in a.rglob('*.ipynb')
                              if not any(part.startswith(('.', '_')) for part in p.relative_to(a).parts))
        else: yield a


def main(args):
    bad = 0
    for nb in notebooks(args):
        cells = json.loads(nb.read_text(encoding='utf-8'))['cells']
        for i, c in enumerate(cells):
            if c['cell_type'] != 'code': continue
            src = c['source'] if isinstance(c['source'], str) else ''.join(c['source'])
            why = check_cell(src)
            if why is None: continue
            where = f"{nb}: cell {i} (id {c.get('id', '?')})"
            if why.startswith('SKIP'): print(f'warning: {where}: {why}', file=sys.stderr); continue
            bad += 1
            print(f'{where}: {why}')
    if bad:
        print(f'{bad} cell(s) mix imports with other code: put the imports in a cell of their own '
              '(nbdev runs import cells out of context while building the docs)')
        return 1
    print('check_imports: every import sits in a cell of its own')
    return 0


if __name__ == '__main__': sys.exit(main(sys.argv[1:]))
