"""Tensor <-> Vec: zero-copy where dtype and device match, one explicit copy otherwise."""

import gc

import numpy as np
import pytest
import torch
from petsc4py import PETSc

from deq_petsc.core.interop import TensorLayout, petsc_torch_dtype, shares_memory, vec_local_view
from helpers import double_scalars


@double_scalars
def test_petsc_scalar_is_double():
    assert petsc_torch_dtype() == torch.float64
    assert np.dtype(PETSc.ScalarType) == np.float64


def test_zero_copy_shares_memory_both_ways():
    t = torch.arange(24, dtype=petsc_torch_dtype()).reshape(2, 3, 4)   # float32 in a single build
    layout = TensorLayout.like(t)
    assert layout.zero_copy
    vec = layout.create_vec(t)
    try:
        assert shares_memory(t, vec)
        assert vec_local_view(vec).data_ptr() == t.data_ptr()
        vec.scale(2.0)                      # PETSc writes, torch sees
        assert t[1, 2, 3].item() == 46.0
        t[0, 0, 1] = -7.0                   # torch writes, PETSc sees
        assert vec.getValue(1) == -7.0
        view = layout.read(vec)
        assert view.shape == t.shape and view.data_ptr() == t.data_ptr()
    finally:
        vec.destroy()


def test_zero_copy_vec_keeps_buffer_alive():
    layout = TensorLayout(torch.Size([5]), torch.float64, torch.device("cpu"))
    vec = layout.create_vec(torch.linspace(0, 1, 5, dtype=torch.float64))
    gc.collect()
    try:
        np.testing.assert_allclose(vec.getArray(readonly=True), np.linspace(0, 1, 5))
    finally:
        vec.destroy()


def test_a_model_of_another_precision_is_cast_once_and_not_shared():
    petsc = petsc_torch_dtype()
    other = torch.float32 if petsc == torch.float64 else torch.float64
    t = torch.linspace(-1, 1, 10, dtype=other).reshape(2, 5)   # exact in both precisions
    layout = TensorLayout.like(t)
    assert not layout.zero_copy
    vec = layout.create_vec(t)
    try:
        assert not shares_memory(t, vec)
        np.testing.assert_array_equal(vec.getArray(readonly=True),
                                      t.to(petsc).reshape(-1).numpy())
        back = layout.read(vec)
        assert back.dtype == other and back.shape == t.shape
        assert torch.equal(back, t.to(petsc).to(other))
        layout.write(3 * t, vec)
        np.testing.assert_allclose(vec.getArray(readonly=True),
                                   (3 * t).to(petsc).reshape(-1).numpy())
    finally:
        vec.destroy()


def test_non_contiguous_tensor_is_copied_correctly():
    base = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    t = base.T                               # not contiguous
    layout = TensorLayout.like(t)
    vec = layout.create_vec(t)
    try:
        assert not shares_memory(t, vec)
        np.testing.assert_array_equal(vec.getArray(readonly=True), t.reshape(-1).numpy())
    finally:
        vec.destroy()


def test_vectors_petsc_creates_itself_are_wrapped():
    t = torch.randn(4, 3, dtype=petsc_torch_dtype())
    layout = TensorLayout.like(t)
    vec = layout.create_vec(t)
    dup = vec.duplicate()                    # PETSc's own memory, as SNES work vectors are
    try:
        layout.write(t * 5, dup)
        assert torch.equal(layout.read(dup), t * 5)
        assert not shares_memory(t, dup)
    finally:
        dup.destroy()
        vec.destroy()


def test_read_only_access_keeps_cached_norms():
    t = torch.randn(100, dtype=torch.float64)
    layout = TensorLayout.like(t)
    vec = layout.create_vec(t)
    try:
        n1 = vec.norm()
        layout.read(vec)
        assert vec.norm() == n1
        layout.write(2 * t, vec)
        assert vec.norm() == pytest.approx(2 * n1)   # a write invalidates the cached norm
    finally:
        vec.destroy()


def test_size_mismatch_is_a_clear_error():
    layout = TensorLayout(torch.Size([2, 3]), torch.float64, torch.device("cpu"))
    vec = PETSc.Vec().createSeq(7)
    try:
        with pytest.raises(ValueError, match="does not match the layout"):
            layout.read(vec)
        with pytest.raises(ValueError, match="does not match the layout"):
            layout.create_vec(torch.zeros(3, 2, dtype=torch.float64))
    finally:
        vec.destroy()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensor_goes_through_host_explicitly():
    t = torch.randn(3, 4, dtype=torch.float64, device="cuda")
    layout = TensorLayout.like(t)
    assert not layout.zero_copy
    vec = layout.create_vec(t)
    try:
        back = layout.read(vec)
        assert back.device.type == "cuda" and torch.equal(back, t)
    finally:
        vec.destroy()


@double_scalars
def test_device_detection_and_crossings():
    from deq_petsc.core.devices import crossing, describe, resolve_device
    from deq_petsc.core.errors import DEQInputError

    d = describe()
    assert d["petsc_scalar"] == "float64" and d["torch_cuda"] == torch.cuda.is_available()
    assert d["petsc_device_memory"] is False                 # the default CPU-only build
    assert crossing(torch.float64, torch.device("cpu")).startswith("zero-copy")
    assert "torch.float32 <-> torch.float64" in crossing(torch.float32, torch.device("cpu"))
    assert "cuda:0 <-> host" in crossing(torch.float64, torch.device("cuda:0"))
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DEQInputError, match="only cpu and cuda"):
        resolve_device("meta")
