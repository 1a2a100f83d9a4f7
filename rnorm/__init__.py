"""rnorm: a reproduction study of RobustNorm and Easy Batch Normalization (AdvProp).

Modules, one concept each (see DESIGN.md): ``data``, ``norms``, ``models``, ``attacks``,
``train``, ``runs``, ``evaluate``, ``probes``, ``plots``, ``cli`` / ``book``.
"""
__version__ = "0.1.0"
