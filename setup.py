import os.path as osp

from setuptools import find_packages, setup


def read_version():
    scope = {}
    with open(osp.join(osp.dirname(__file__), 'mmgfp', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


setup(
    name='mmgfp',
    version=read_version(),
    description='Group Fisher Pruning (ICML 2021) for MMEngine, MMDetection and MMPretrain',
    long_description=open('README.md').read() if osp.exists('README.md') else '',
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('tests', 'tests.*', 'configs', 'tools', 'benchmarks')),
    python_requires='>=3.8',
    install_requires=['torch', 'numpy'],
    extras_require={
        'openmmlab': ['mmengine==0.10.7', 'mmcv==2.1.0', 'mmdet==3.3.0', 'mmpretrain==1.2.0'],
        # torch >= 2.9 exports ONNX through torch.export + onnxscript (torch 2.11+'s API: 0.7)
        'export': ['onnx', 'onnxscript>=0.7', 'onnxruntime'],
        'tests': ['pytest', 'hypothesis', 'scikit-learn', 'onnx', 'onnxscript>=0.7',
                  'onnxruntime', 'tensorboard'],
        'benchmark': ['torch-pruning==1.6.1', 'matplotlib', 'scikit-learn'],
    },
    zip_safe=False,
)
