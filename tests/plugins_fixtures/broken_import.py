"""A plugin whose import fails, as a plugin with a missing dependency would."""

raise ImportError("segbench-broken needs the package 'not_installed_anywhere'")
