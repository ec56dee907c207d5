"""Sphinx configuration of mmgfp's documentation (markdown through myst-parser, as OpenMMLab).

Build (from the repository root, with ``pip install -e .[docs]``)::

    sphinx-build -W --keep-going -b html docs/en docs/en/_build/html

``tests/docs/test_docs.py`` runs the same build in CI, warnings as errors.
"""
import os
import os.path as osp
import sys

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
sys.path.insert(0, ROOT)  # autodoc imports this checkout's mmgfp, not an installed one
os.environ.setdefault('MPLBACKEND', 'Agg')


def _version() -> str:
    scope = {}
    with open(osp.join(ROOT, 'mmgfp', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


project = 'mmgfp'
author = 'mmgfp contributors'
copyright = '2025-2026, mmgfp contributors'
version = release = _version()

extensions = [
    'myst_parser',
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',  # Google-style docstrings
    'sphinx.ext.viewcode',
]
source_suffix = {'.rst': 'restructuredtext', '.md': 'markdown'}
root_doc = 'index'
exclude_patterns = ['_build', 'Thumbs.db', '.DS_Store']

# myst: headings get anchors down to level 3, so `page.md#a-heading` links resolve
myst_heading_anchors = 3
myst_enable_extensions = ['colon_fence', 'deflist']

# The OpenMMLab codebases are imported only to register our classes in their registries: mocked,
# the API reference builds without them (and a few seconds faster). MMEngine stays real, since the
# hook subclasses its Hook.
autodoc_mock_imports = ['mmdet', 'mmpretrain', 'mmseg', 'mmpose', 'mmyolo', 'mmdeploy']
autodoc_member_order = 'bysource'
autodoc_inherit_docstrings = False  # no MMEngine Hook boilerplate under our overrides
autodoc_typehints = 'description'
autodoc_default_options = {'members': True, 'show-inheritance': True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

html_theme = 'furo'
html_title = f'mmgfp {release}'
html_static_path = []

# -- pages added without editing an index ------------------------------------------------------
# A section index (user_guides/index.md, ...) lists its pages in reading order and ends its toctree
# with a glob `*`, so a page added later to the folder appears without an edit. Sphinx warns
# when that glob matches nothing (every page already listed): then the line is dropped here.
GLOB_SECTIONS = ('user_guides', 'advanced_guides', 'benchmarks')


def _drop_empty_glob(app, docname, source):
    section = docname.rsplit('/', 1)[0]
    if section not in GLOB_SECTIONS or not docname.endswith('/index'):
        return
    text = source[0]
    lines = text.split('\n')
    pages = {osp.splitext(f)[0] for f in os.listdir(osp.join(app.srcdir, section))
             if f.endswith('.md') and f != 'index.md'}
    if pages <= {line.strip() for line in lines}:
        source[0] = '\n'.join(line for line in lines if line.strip() != '*')


# -- links to repository files outside docs/en --------------------------------------------------
# A markdown link to a .md file outside the documentation (`../../../configs/README.md`) is a
# file of the repository, not a page: link it as a download (as myst does for other files)
# instead of a missing document. A link to a repository folder (`../../../configs/coco`), which
# GitHub shows, keeps its text without a link. tests/docs/test_docs.py checks that every such
# file and folder exists.
def _repo_md_links_to_downloads(app, doctree):
    from sphinx import addnodes
    env = app.env
    doc_dir = osp.dirname(env.doc2path(env.docname))
    for node in list(doctree.findall(addnodes.pending_xref)):
        if node.get('reftype') != 'myst':
            continue
        target = node['reftarget']
        if node.get('refdomain') is None:
            if osp.isdir(osp.join(doc_dir, target.split('#', 1)[0])):
                node.replace_self(node.children)
            continue
        if node.get('refdomain') != 'doc':
            continue
        if target in env.found_docs:
            continue
        path = (target if osp.isabs(target) else osp.join(app.srcdir, target)) + '.md'
        if not osp.isfile(path):
            continue  # left to myst, which warns
        ref = addnodes.download_reference(
            refdomain=None, reftarget=osp.relpath(path, doc_dir), refdoc=env.docname,
            reftype='myst', refexplicit=node.get('refexplicit', True))
        ref.extend(node.children)
        ref.source, ref.line = node.source, node.line
        node.replace_self(ref)


# -- modules added without editing the API reference ---------------------------------------------
# Each API page documents the modules of one package in the order it lists them; a module added
# later to the package (a new codebase, say) is appended to its page here.
API_PAGES = {'api/core': 'mmgfp.core', 'api/hooks': 'mmgfp.hooks',
             'api/codebases': 'mmgfp.codebases', 'api/apis': 'mmgfp.apis'}


def _package_modules(package: str):
    top = osp.join(ROOT, *package.split('.'))
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(('_', '.')))
        for f in sorted(filenames):
            if f.endswith('.py') and not f.startswith('_'):
                rel = osp.relpath(osp.join(dirpath, f[:-3]), ROOT)
                yield rel.replace(os.sep, '.')


def _append_missing_modules(app, docname, source):
    package = API_PAGES.get(docname)
    if package is None:
        return
    for module in _package_modules(package):
        if f'.. automodule:: {module}\n' not in source[0]:
            source[0] += (f'\n## `{module}`\n\n```{{eval-rst}}\n.. automodule:: {module}\n```\n')


def setup(app):
    app.connect('source-read', _drop_empty_glob)
    app.connect('source-read', _append_missing_modules)
    # before Sphinx's download collector (priority 500) records the files to copy
    app.connect('doctree-read', _repo_md_links_to_downloads, priority=400)
