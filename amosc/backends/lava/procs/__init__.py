"""Lava processes and fixed-point models of the ``fast`` style.

Keep this package free of side effects and of unrelated modules: Lava's
compiler imports every .py file beside a module that defines a process model.
"""
