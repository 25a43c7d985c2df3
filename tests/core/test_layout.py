"""The package layout is the architecture: a shared core that imports no product, products that import only the
core (CT refinement also runs the cascade), and a mask refiner that loads without the X-ray physics."""

import ast
import subprocess
import sys

from conftest import ROOT

PRODUCTS = {"xray2ct", "ct_refinement", "mask_refiner", "datasets"}
ALLOWED = {"ct_refinement": {"xray2ct"}}  # CT refinement runs the frozen cascade on the X-rays


def _custom_imports(path):
    """Second-level packages of ``custom`` that a module imports (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "custom" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_core_imports_no_product_and_products_only_what_they_consume():
    problems = []
    for path in sorted((ROOT / "custom").rglob("*.py")):
        package = path.relative_to(ROOT / "custom").parts[0]
        for target in _custom_imports(path) & PRODUCTS:
            if package == "core" or (
                package in PRODUCTS and target != package and target not in ALLOWED.get(package, ())
            ):
                problems.append(f"{path.relative_to(ROOT)} imports custom.{target}")
    assert not problems, problems


def test_loading_the_mask_refiner_does_not_load_the_xray_physics():
    code = (
        "import sys, custom.mask_refiner.data, custom.mask_refiner.network, custom.mask_refiner.writer, "
        "custom.mask_refiner.evaluation, custom.mask_refiner.losses, custom.mask_refiner.samplers; "
        "print(sorted(m for m in sys.modules if m.startswith('custom.core.physics')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout
