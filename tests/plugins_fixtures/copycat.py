"""A plugin that registers a method named ``echo`` too, and a method of its own."""

from segbench import MethodSpec, hookimpl


def _build(num_classes: int):
    raise AssertionError("never built in tests")


@hookimpl
def register_methods(register) -> None:
    register(MethodSpec(name="echo", build=_build, supervision="image", outputs={"scores"}))
    register(MethodSpec(name="copycat_only", build=_build, supervision="image", outputs={"scores"}))
