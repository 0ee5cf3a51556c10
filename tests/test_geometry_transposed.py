"""``layout="in_out"``: geometries of weights stored ``(in, out)`` act on the transpose."""
from __future__ import annotations

import pytest
import torch

from steepest.geometry import GEOMETRY_NAMES, Transposed, make_geometry

MATRIX_GEOMETRIES = [n for n in GEOMETRY_NAMES if n != "identity"]


@pytest.mark.parametrize("name", MATRIX_GEOMETRIES)
def test_transposed_is_the_geometry_of_the_transpose(name):
    torch.manual_seed(10)
    plain = make_geometry({"geometry": name, "ns": "svd"} if name == "spectral" else {"geometry": name})
    flipped = make_geometry({"geometry": name, "ns": "svd", "layout": "in_out"} if name == "spectral"
                            else {"geometry": name, "layout": "in_out"})
    assert isinstance(flipped, Transposed) and flipped.name == name
    x = torch.randn(6, 10, dtype=torch.float64)
    stored = x.T.contiguous()  # the same layer stored (in, out)
    torch.testing.assert_close(flipped.lmo(stored), plain.lmo(x).T)
    torch.testing.assert_close(flipped.dual_norm(stored), plain.dual_norm(x))
    torch.testing.assert_close(flipped.norm(stored), plain.norm(x))
    assert flipped.shape_scale((10, 6)) == plain.shape_scale((6, 10))
    # the LMO/dual-norm identity holds in the stored layout too
    torch.testing.assert_close((stored * flipped.lmo(stored)).sum(), flipped.dual_norm(stored), rtol=1e-5, atol=0)
    assert flipped.lmo_many([stored])[0].shape == (10, 6)
    assert flipped.describe().endswith(" on W^T")


def test_muon_shape_factor_follows_the_true_fans():
    # a GPT-2 c_fc stored (in=32, out=128) is a 128 x 32 layer: Muon's factor sqrt(max(1, 128/32)) = 2
    flipped = make_geometry({"geometry": "spectral", "shape_scale": "original", "layout": "in_out"})
    plain = make_geometry({"geometry": "spectral", "shape_scale": "original"})
    assert flipped.shape_scale((32, 128)) == pytest.approx(2.0)
    assert plain.shape_scale((32, 128)) == pytest.approx(1.0)


def test_init_writes_through_the_view():
    flipped = make_geometry({"geometry": "spectral", "layout": "in_out"})
    w = torch.zeros(10, 4)
    flipped.init_(w, scale=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.linalg.matrix_norm(w, ord=2) == pytest.approx(1.0, rel=1e-5)


def test_errors():
    with pytest.raises(ValueError, match=r"^Unknown layout 'io'; expected one of: out_in, in_out$"):
        make_geometry({"geometry": "spectral", "layout": "io"})
    flipped = make_geometry({"geometry": "spectral", "layout": "in_out"})
    with pytest.raises(ValueError, match=r"layout 'in_out' applies to 2-D weights stored \(in, out\), got shape "
                                         r"\(3, 3, 2\) for parameter 'w'"):
        flipped.check_shape((3, 3, 2), "w")
    with pytest.raises(TypeError, match="transpose once"):
        Transposed(flipped)
