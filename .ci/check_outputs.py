#!/usr/bin/env python3
"""Fail when a stored notebook output (the docs site, README) shows the machine that ran it, or a warning.

The stored outputs of `nbs/*.ipynb` are what the docs site and README show. They must read the same on any
machine: no absolute path (a temporary folder, the checkout, a site-packages), no user or host name, no warning
line (a warning a reader sees is a bug to fix), and no Python object repr (`<function …>`, `<class …>`, `… at 0x…`).
The command line's `--help` (the top level's and each command's) is checked the same way, and for `%%`.
Usage: python .ci/check_outputs.py [NOTEBOOK_OR_FOLDER_OR_MD ...] (default: nbs, README.md and the --help texts).
Exit status 1, with one line per finding (file, cell, what, the offending text), when anything is found.
"""
import getpass, json, re, socket, subprocess, sys
from pathlib import Path

_ABS = re.compile(r'(?<![\w.~-])(?:/(?:tmp|work|home|root|Users|private|var/folders|opt|usr|mnt|srv|scratch)(?=/)[^\s\'"`)\]]*'
                  r'|[A-Za-z]:\\[^\s\'"]+)')
_SITE = re.compile(r'site-packages|dist-packages')
_WARNING = re.compile(r'\b\w*Warning\b[:(]|^\s*warnings\.warn|\bUserWarning\b|\bDeprecationWarning\b', re.M)
_REPR = re.compile(r'<(?:function|class|bound method|module|built-in function) [^>]*>|\bat 0x[0-9a-f]{6,}')

def _names()->list:
    names = []
    for n in (getpass.getuser(), socket.gethostname()):
        if n and len(n) >= 4 and n not in ('root', 'localhost'): names.append(n)   # too common to search for
    return names

def output_texts(cell:dict):
    "Each stored output of a code cell as text (streams, results, errors; images are skipped)."
    for o in cell.get('outputs', []):
        if o.get('output_type') == 'stream': yield ''.join(o.get('text', ''))
        elif o.get('output_type') == 'error': yield '\n'.join(o.get('traceback', []))
        else:
            for k, v in o.get('data', {}).items():
                if k.startswith('text/') or k == 'application/json': yield v if isinstance(v, str) else ''.join(v) if isinstance(v, list) else json.dumps(v)

def problems(text:str, names:list)->list:
    "(what, excerpt) for each problem in one output's text."
    found = [('absolute path', m.group(0)) for m in _ABS.finditer(text)]
    found += [('site-packages path', text[max(0, m.start() - 40):m.end()]) for m in _SITE.finditer(text)]
    found += [('warning', text[m.start():m.start() + 100].splitlines()[0]) for m in _WARNING.finditer(text)]
    found += [('object repr', m.group(0)) for m in _REPR.finditer(text)]
    found += [('user or host name', n) for n in names if n in text]
    return found

def _files(args):
    for a in map(Path, args or ['nbs', 'README.md']):
        if a.is_dir(): yield from sorted(p for p in a.rglob('*.ipynb') if not any(q.startswith(('.', '_')) for q in p.relative_to(a).parts))
        elif a.exists(): yield a

def _markdown_outputs(path:Path):
    "Text of README's output blocks (indented by 4 spaces, as nbconvert writes cell outputs)."
    block = []
    for line in path.read_text(encoding='utf-8').splitlines() + ['']:
        if line.startswith('    '): block.append(line[4:])
        elif block: yield '\n'.join(block); block = []

def help_texts():
    "(where, text) of `pneumonia_nb --help` and of each command's --help."
    run = lambda *a: subprocess.run([sys.executable, '-m', 'pneumonia_nb', *a, '--help'], capture_output=True, text=True)
    top = run()
    yield 'pneumonia_nb --help', top.stdout + top.stderr
    listed = top.stdout.split('positional arguments:')[-1].split('options:')[0]
    commands = re.findall(r'^    (\w+)', listed, flags=re.M)
    if not commands: yield 'pneumonia_nb --help', 'no commands listed <class unreadable help>'   # a finding, not a silent pass
    for c in commands:
        r = run(c); yield f'pneumonia_nb {c} --help', r.stdout + r.stderr

def main(args)->int:
    names, n = _names(), 0
    if not args:
        for where, text in help_texts():
            found = problems(text, names) + [('escaped percent sign', m.group(0)) for m in re.finditer(r'.{0,30}%%.{0,10}', text)]
            for what, excerpt in found: n += 1; print(f'{where}: {what}: {excerpt.strip()[:160]}')
    for f in _files(args):
        if f.suffix == '.md': items = [(f'output block {i}', t) for i, t in enumerate(_markdown_outputs(f))]
        else:
            cells = json.loads(f.read_text(encoding='utf-8'))['cells']
            items = [(f'cell {i}', t) for i, c in enumerate(cells) if c['cell_type'] == 'code' for t in output_texts(c)]
        for where, text in items:
            for what, excerpt in problems(text, names):
                n += 1; print(f'{f}: {where}: {what}: {excerpt.strip()[:160]}')
    if n: print(f'{n} problem(s) in stored outputs'); return 1
    print('stored outputs' + ('' if args else ' and --help') + ': no machine paths, names, warnings or object reprs'); return 0

if __name__ == '__main__': sys.exit(main(sys.argv[1:]))
