#!/usr/bin/env python3
"""Fail when a notebook code cell mixes import statements with other code.

While building the docs (`nbdev_proc_nbs`, the first step of `nbdev_docs`) nbdev executes every cell that holds
an import, anywhere in it, out of context: code beside the import that uses names from earlier cells breaks the
docs build. So a cell that holds an import holds nothing else: only top-level import statements, one line each
(comments, `#|` directives and blank lines aside). Lazy imports inside functions use `importlib`.

Skipped: lines starting with `!` or `%`, and the `import nbdev; nbdev.nbdev_export()` footer, which nbdev never
executes while building the docs. Usage: python .ci/check_imports.py [NOTEBOOK_OR_FOLDER ...] (default: nbs).
Exit status 1, with one line per offending cell (notebook, cell index, cell id), when any cell fails.
"""
import ast, json, sys
from pathlib import Path

IMPORTS = (ast.Import, ast.ImportFrom)

def check_cell(src:str)->str|None:
    "None if the cell is fine, else why not."
    if 'nbdev_export()' in src: return None
    try: tree = ast.parse('\n'.join('' if l.lstrip().startswith(('!', '%')) else l for l in src.splitlines()))
    except SyntaxError: return None   # nbdev does not execute a cell that does not parse either
    imps = [n for n in ast.walk(tree) if isinstance(n, IMPORTS)]
    if not imps: return None
    other = next((s for s in tree.body if not isinstance(s, IMPORTS)), None)
    if other is not None: return f'imports with other code ({type(other).__name__} on line {other.lineno})'
    multi = next((n for n in imps if n.end_lineno > n.lineno), None)
    if multi is not None: return f'an import over several lines (line {multi.lineno}): one line each'
    return None

def notebooks(args):
    for a in map(Path, args or ['nbs']):
        if a.is_dir(): yield from sorted(p for p in a.rglob('*.ipynb') if not any(q.startswith(('.', '_')) for q in p.relative_to(a).parts))
        else: yield a

def main(args)->int:
    bad = 0
    for nb in notebooks(args):
        for i, c in enumerate(json.loads(nb.read_text(encoding='utf-8'))['cells']):
            if c['cell_type'] == 'code' and (why := check_cell(''.join(c['source']))):
                bad += 1; print(f"{nb}: cell {i} (id {c.get('id', '?')}): {why}")
    if bad: print(f'{bad} cell(s) mix imports with other code: put the imports in a cell of their own'); return 1
    print('check_imports: every import sits in a cell of its own'); return 0

if __name__ == '__main__': sys.exit(main(sys.argv[1:]))
