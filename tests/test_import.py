import subprocess
import sys


def test_import_is_lean():
    code = (
        "import sys, sd_ovopt; "
        "print(','.join(m for m in ('openvino', 'nncf', 'optimum', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_training_recipes_import_without_optimum_intel():
    """GPU training machines run distillation and QAT without optimum-intel: only the OpenVINO pipeline
    needs it, and the recipes load it on use."""
    code = "import sys, sd_ovopt.recipes, sd_ovopt.recipes.distill; print('optimum' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_public_names_resolve():
    import sd_ovopt

    for name in sd_ovopt.__all__:
        assert getattr(sd_ovopt, name) is not None, name
    assert len(set(sd_ovopt.__all__)) == len(sd_ovopt.__all__)  # ruff (RUF022) keeps it sorted


def test_errors_inherit_builtins():
    from sd_ovopt import errors

    assert issubclass(errors.ModelNotFoundError, FileNotFoundError)
    assert issubclass(errors.ShapeMismatchError, ValueError)
    assert issubclass(errors.OutputExistsError, FileExistsError)
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.SdOvOptError)
