"""pytest setup at the pack root (the tests' own fixtures live in tests/conftest.py)."""

import pytest


class _PackRootAsPlainDirectory:
    """The root __init__.py is ComfyUI's entry point: its relative imports need the package name the host gives the
    folder. Collected as a test Package, pytest would import it under a name made from the folder's, which fails when
    that is not an identifier (a clone into `tmp.XXXX`). The root is collected as a plain directory instead."""

    def __init__(self, root):
        self.root = root

    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(self, path, parent):
        if path == self.root:
            return pytest.Dir.from_parent(parent, path=path)
        return None


def pytest_configure(config):
    # Registered as a plugin, not written as a conftest hook: pytest asks the root's parent folder how to collect the
    # root, and a conftest's hooks only answer for its own folder. config.rootpath is the path pytest collects, the
    # same spelling (no symlinks resolved) that the hook is called with.
    config.pluginmanager.register(_PackRootAsPlainDirectory(config.rootpath), "srrl-pack-root")
