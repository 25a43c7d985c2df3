"""DDIM with v-prediction against closed-form cases."""

import math

import pytest
import torch

from custom.xray2ct.ddim import DDIMSampler
from custom.xray2ct.schedule import add_noise, cosine_alpha_bar, eps_from_x0, velocity, x0_from_v

T = 1000


def test_schedule_is_not_renormalized_and_decreasing():
    a = cosine_alpha_bar(T)
    assert a[0] < 1.0 and a[0] > 0.999  # step 0 already holds a little noise (no wasted noise-free step)
    assert torch.all(a[1:] <= a[:-1]) and a[-1] < 1e-4
    expected0 = math.cos((1 / T + 0.008) / 1.008 * math.pi / 2) ** 2
    assert math.isclose(float(a[0]), expected0, rel_tol=1e-12)


def test_v_recoveries_are_exact():
    torch.manual_seed(0)
    x0, eps = torch.randn(4, 1, 5, 5, 5), torch.randn(4, 1, 5, 5, 5)
    a = cosine_alpha_bar(T)[torch.tensor([0, 10, 500, 999])]
    x_t = add_noise(x0, eps, a)
    v = velocity(x0, eps, a)
    assert torch.allclose(x0_from_v(x_t, v, a), x0, atol=1e-5)
    assert torch.allclose(eps_from_x0(x_t, x0, a), eps, atol=1e-4)


def perfect_v(x0_true):
    """The v a perfect network predicts for data x0_true, whatever noise produced x_t."""
    a = cosine_alpha_bar(T)

    def net(x_t, t01):
        t = (t01 * T).round().long()
        at = a[t].float().view(-1, *[1] * (x_t.ndim - 1))
        eps = (x_t - at.sqrt() * x0_true) / (1 - at).sqrt()
        return at.sqrt() * eps - (1 - at).sqrt() * x0_true

    return net


@pytest.mark.parametrize("steps", [1, 2, 10, 50])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_perfect_predictor_returns_x0(steps, eta):
    torch.manual_seed(1)
    x0 = torch.rand(2, 1, 6, 6, 6) * 2 - 1
    sampler = DDIMSampler(cosine_alpha_bar(T), steps, eta=eta)
    out = sampler.sample(perfect_v(x0), x0.shape, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, x0, atol=1e-4)


def test_timesteps_come_from_the_list():
    sampler = DDIMSampler(cosine_alpha_bar(T), 10)
    ts = sampler.timesteps
    assert ts[0] == T - 1 and ts[-1] == 0 and len(ts) == 10
    seen = []

    def spy(x_t, t01):
        seen.append(int(round(float(t01[0]) * T)))
        return torch.zeros_like(x_t)

    sampler.sample(spy, (1, 1, 2, 2, 2), generator=torch.Generator().manual_seed(0))
    assert seen == ts  # every network call is at a listed timestep, with t / T as input


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_gaussian_data_gives_gaussian_samples(eta):
    """Data ~ N(0, s^2) has a closed-form optimal v; DDIM must return samples with that spread.

    With few steps DDIM under-disperses (0.43 at 10 steps, 0.49 at 50, eta = 0): 200 steps are close to exact."""
    s = 0.5
    a = cosine_alpha_bar(T)

    def optimal_v(x_t, t01):
        at = a[(t01 * T).round().long()].float().view(-1, 1, 1, 1, 1)
        x0_hat = at.sqrt() * s**2 / (at * s**2 + 1 - at) * x_t  # E[x0 | x_t]
        eps_hat = (x_t - at.sqrt() * x0_hat) / (1 - at).sqrt()
        return at.sqrt() * eps_hat - (1 - at).sqrt() * x0_hat

    sampler = DDIMSampler(a, 200, eta=eta, clip_x0=None)
    out = sampler.sample(optimal_v, (4, 1, 16, 16, 16), generator=torch.Generator().manual_seed(3))
    assert abs(float(out.std()) - s) < 0.015
    assert abs(float(out.mean())) < 0.03


def test_seeded_sampling_is_reproducible_and_batched():
    a = cosine_alpha_bar(T)
    net = lambda x, t: 0.1 * x  # noqa: E731
    sampler = DDIMSampler(a, 5, eta=1.0)
    one = sampler.sample(net, (3, 1, 4, 4, 4), generator=torch.Generator().manual_seed(7))
    two = sampler.sample(net, (3, 1, 4, 4, 4), generator=torch.Generator().manual_seed(7))
    other = sampler.sample(net, (3, 1, 4, 4, 4), generator=torch.Generator().manual_seed(8))
    assert torch.equal(one, two) and not torch.equal(one, other)
    assert not torch.equal(one[0], one[1])  # each batch item is its own sample


def test_guidance_moves_x0_towards_target():
    torch.manual_seed(2)
    target = torch.full((1, 1, 4, 4, 4), 0.5)
    a = cosine_alpha_bar(T)
    zero_net = lambda x, t: torch.zeros_like(x)  # noqa: E731
    guidance = lambda x0: ((x0 - target) ** 2).sum()  # noqa: E731
    sampler = DDIMSampler(a, 10)
    g = torch.Generator().manual_seed(0)
    free = sampler.sample(zero_net, target.shape, generator=g)
    g = torch.Generator().manual_seed(0)
    guided = sampler.sample(zero_net, target.shape, generator=g, guidance=guidance, guidance_scale=0.2)
    assert (guided - target).abs().mean() < (free - target).abs().mean()


def test_rejects_bad_settings():
    with pytest.raises(ValueError):
        DDIMSampler(cosine_alpha_bar(T), 0)
    with pytest.raises(ValueError):
        DDIMSampler(cosine_alpha_bar(T), 10, eta=-1)
    with pytest.raises(ValueError, match="strength"):
        DDIMSampler(cosine_alpha_bar(T), 10, strength=0.0)
    with pytest.raises(ValueError, match="strength"):
        DDIMSampler(cosine_alpha_bar(T), 10, strength=1.5)


def _spy():
    seen = []

    def net(x_t, t01, **kwargs):
        seen.append(int(round(float(t01[0]) * T)))
        return torch.zeros_like(x_t)

    return net, seen


@pytest.mark.parametrize("steps", [1, 3])
def test_partial_start_walks_the_rest_of_the_schedule_from_the_noised_guess(steps):
    torch.manual_seed(4)
    guess = torch.rand(2, 1, 5, 5, 5) * 2 - 1
    sampler = DDIMSampler(cosine_alpha_bar(T), steps, strength=0.3)
    net, seen = _spy()
    sampler.sample(net, guess.shape, generator=torch.Generator().manual_seed(0), x_init=guess)
    assert seen[0] == round(0.3 * (T - 1)) and seen[-1] == (0 if steps > 1 else seen[0]) and len(seen) == steps
    # a network that is perfect for the guess returns the guess: the start is the forward process applied to it
    out = sampler.sample(perfect_v(guess), guess.shape, generator=torch.Generator().manual_seed(0), x_init=guess)
    assert torch.allclose(out, guess, atol=1e-4)


def test_full_strength_ignores_the_guess():
    guess = torch.ones(1, 1, 4, 4, 4)
    sampler = DDIMSampler(cosine_alpha_bar(T), 4)
    net = lambda x, t: 0.1 * x  # noqa: E731
    plain = sampler.sample(net, guess.shape, generator=torch.Generator().manual_seed(5))
    given = sampler.sample(net, guess.shape, generator=torch.Generator().manual_seed(5), x_init=guess)
    assert torch.equal(plain, given)


def test_inferer_starts_a_later_stage_from_its_upsampled_input():
    from custom.xray2ct.inferer import DDIMInferer

    net, seen = _spy()
    prev = torch.zeros(1, 1, 4, 4, 4)
    DDIMInferer(4, T, 2, start_strength=0.2)(torch.zeros(1, 2, 8, 8), net, prev=prev)
    assert seen == [round(0.2 * (T - 1)), 0]
    seen.clear()
    DDIMInferer(4, T, 2)(torch.zeros(1, 2, 8, 8), net, prev=prev)
    assert seen == [T - 1, 0]


def test_a_bad_start_strength_is_one_clear_error_naming_the_key():
    from custom.core.errors import InputError
    from custom.xray2ct.inferer import DDIMInferer, build_cascade

    later = [
        {"network": {"volume_size": 8}, "ckpt_path": "-", "xray_size": 8, "num_inference_steps": 1, "start_strength": 0}
    ]

    def load_network(number, network, ckpt):
        return torch.nn.Identity()

    with pytest.raises(InputError, match=r"stage2#start_strength must be greater than 0"):
        build_cascade(DDIMInferer(4, T, 1), 8, later, "1-2", load_network=load_network)
