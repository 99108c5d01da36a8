"""AMD Quark MXFP4 packing, shared by the tools/ scripts.

Weights: per row, groups of 32 inputs share an E8M0 scale 2^(floor(log2(amax)) - 2) (the OCP
MX v1.0 reference choice, emax(E2M1) = 2); each element is rounded to the nearest E2M1 value
and saturated at +-6. Stored as U8 [out, in/2] (low nibble = even element) and U8 [out, in/32].
"""

import torch

E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
GROUP = 32


def quantize(w: torch.Tensor):
    """w [out, in] fp32 -> (packed U8 [out, in/2], scales U8 [out, in/32], dequantized fp32 [out, in])."""
    out, inp = w.shape
    assert inp % GROUP == 0, f"in = {inp} is not a multiple of {GROUP}"
    g = w.float().reshape(out, inp // GROUP, GROUP)
    amax = g.abs().amax(-1)
    exp = torch.where(amax > 0, torch.floor(torch.log2(amax.clamp_min(1e-38))) - 2, torch.full_like(amax, -127.0))
    exp = exp.clamp(-127, 127)
    scale = torch.pow(2.0, exp)
    x = g / scale[..., None]
    mag = (x.abs()[..., None] - E2M1).abs().argmin(-1)  # nearest; saturates at 6
    neg = (x < 0) & (mag > 0)
    codes = (mag + 8 * neg.long()).to(torch.uint8).reshape(out, inp)
    deq = (E2M1[mag] * torch.where(neg, -1.0, 1.0) * scale[..., None]).reshape(out, inp)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).to(torch.uint8).contiguous()
    scales = (exp + 127).to(torch.uint8).contiguous()
    return packed, scales, deq


def dequantize(packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    lo, hi = packed & 0x0F, packed >> 4
    codes = torch.stack([lo, hi], -1).reshape(packed.shape[0], -1).long()
    vals = E2M1[codes & 7] * torch.where(codes >= 8, -1.0, 1.0)
    s = torch.pow(2.0, scales.float() - 127).repeat_interleave(GROUP, dim=1)
    return vals * s
