"""Matching methods recover planted permutations; weight matching behaves as Algorithm 1."""
from __future__ import annotations

import pytest
import torch

from conftest import same_perm
from permalign import zoo
from permalign.match import (activation_matching, get_method, ste_matching, weight_matching,
                             weight_method)
from permalign.match.activation import activation_statistics
from permalign.permutation import apply_permutation, invert, random_permutation
from permalign.stats import CrossMoments


def planted(spec, state, seed):
    """B = a randomly permuted copy of A, and the permutation that maps B back onto A."""
    perm = random_permutation(spec, torch.Generator().manual_seed(seed))
    return apply_permutation(spec, perm, state), invert(perm)


def random_model(name, shape=(3, 16, 16), seed=0):
    torch.manual_seed(seed)
    model, spec = zoo.build(name, input_shape=shape, num_classes=10)
    return model, spec, model.state_dict()


@pytest.mark.parametrize("name", ["mlp:depth=3,width=128", "mlp:depth=4,width=64,norm=ln",
                                  "vgg11:width=0.25,norm=bn", "vgg16:width=0.125,norm=ln"])
def test_weight_matching_recovers_planted_every_time(name):
    model, spec, state = random_model(name)
    for trial in range(5):
        b, truth = planted(spec, state, trial)
        result = weight_matching(spec, state, b, seed=trial)
        assert same_perm(result.perm, truth), f"trial {trial}"
        assert result.converged


def test_weight_matching_resnet_planted_rate():
    """Coordinate descent can get stuck on residual nets: we require a high recovery rate."""
    model, spec, state = random_model("resnet20:width=2,norm=bn")
    recovered = sum(same_perm(weight_matching(spec, state, b, seed=t).perm, truth)
                    for t in range(10) for b, truth in [planted(spec, state, 100 + t)])
    print(f"ResNet-20 x2 planted recovery: {recovered}/10")
    assert recovered >= 8


def test_single_hidden_layer_converges_in_one_sweep():
    model, spec, state = random_model("mlp:depth=1,width=256")
    b, truth = planted(spec, state, 0)
    result = weight_matching(spec, state, b, max_iter=1)
    assert same_perm(result.perm, truth)
    full = weight_matching(spec, state, b)
    assert len(full.history) == 2 and full.history[0] == full.history[1]


def test_objective_never_decreases_and_is_deterministic(trained):
    _, spec, a = trained("mlp:depth=3,width=128", 0)
    _, _, b = trained("mlp:depth=3,width=128", 1)
    r1 = weight_matching(spec, a, b, seed=5)
    r2 = weight_matching(spec, a, b, seed=5)
    assert same_perm(r1.perm, r2.perm) and r1.history == r2.history
    assert all(y >= x - 1e-6 * abs(x) for x, y in zip(r1.history, r1.history[1:]))
    # the aligned objective beats the identity's
    identity = weight_matching(spec, a, b, max_iter=0)
    assert r1.history[-1] > sum(float((a[k] * b[k]).sum()) for k in a
                                if k.endswith(("weight", "bias")))
    assert identity.history == []


def test_init_is_used():
    model, spec, state = random_model("mlp:depth=2,width=64")
    b, truth = planted(spec, state, 0)
    result = weight_matching(spec, state, b, init=truth)
    assert same_perm(result.perm, truth) and len(result.history) == 1


@pytest.mark.parametrize("name", ["mlp:depth=3,width=64", "vgg11:width=0.125,norm=bn",
                                  "resnet20:width=1,norm=ln"])
def test_activation_matching_recovers_planted(trained, digits, name):
    model, spec, state = trained(name, 0)
    b, truth = planted(spec, state, 7)
    result = activation_matching(spec, state, b, model=model, data=digits)
    assert same_perm(result.perm, truth)


@pytest.mark.parametrize("name", ["mlp:depth=3,width=64", "vgg11:width=0.125,norm=bn"])
def test_ste_matching_recovers_planted(trained, digits, name):
    model, spec, state = trained(name, 0)
    b, truth = planted(spec, state, 3)
    result = ste_matching(spec, state, b, model=model, data=digits, epochs=1)
    assert same_perm(result.perm, truth)
    assert result.info["best_midpoint_loss"] == min(result.history)


def test_streaming_statistics_equal_one_batch(trained, digits):
    model, spec, a = trained("vgg11:width=0.125,norm=bn", 0)
    _, _, b = trained("vgg11:width=0.125,norm=bn", 1)
    x = digits.train_x[:300]
    streamed = activation_statistics(spec, model, a, b, x, batch_size=37)
    whole = activation_statistics(spec, model, a, b, x, batch_size=300)
    for g in spec.groups:
        assert streamed[g].count == whole[g].count
        assert torch.allclose(streamed[g].correlation(), whole[g].correlation(), atol=1e-9)
        assert torch.allclose(streamed[g].a.mean, whole[g].a.mean, atol=1e-9)


def test_cross_moments_match_numpy_formula():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(500, 4, generator=g), torch.randn(500, 4, generator=g)
    b[:, 0] = 2 * a[:, 1] + 1
    m = CrossMoments()
    for i in range(0, 500, 64):
        m.update(a[i:i + 64], b[i:i + 64])
    reference = torch.corrcoef(torch.cat([a, b], 1).T.double())[:4, 4:]
    assert torch.allclose(m.correlation(), reference, atol=1e-10)
    assert m.correlation()[1, 0] > 0.999


def test_registry_and_errors():
    assert get_method("weight").function is weight_method
    from permalign.errors import PermalignError
    with pytest.raises(PermalignError, match="unknown matching method"):
        get_method("magic")
    model, spec, state = random_model("mlp:depth=1,width=8")
    with pytest.raises(PermalignError, match="needs the model"):
        activation_matching(spec, state, state)


def test_method_options_are_declared_and_checked():
    """Options are declared at registration; a typo or a bad value is an error, not ignored."""
    from permalign.errors import PermalignError
    from permalign.match import METHODS, Option, register
    model, spec, state = random_model("mlp:depth=1,width=8")
    with pytest.raises(TypeError):
        weight_matching(spec, state, state, max_iters=1)  # typo of max_iter
    weight = get_method("weight")
    with pytest.raises(PermalignError, match="no option 'max_iters'"):
        weight.run(spec, state, state, max_iters=1)
    with pytest.raises(PermalignError, match="must be >= 1"):
        weight.run(spec, state, state, max_iter=0)
    with pytest.raises(PermalignError, match="finite"):
        get_method("ste").run(spec, state, state, model=model, data=None, lr=float("nan"))
    assert weight.run(spec, state, state, max_iter=2, seed=3).info["seed"] == 3
    assert not weight.needs_data and get_method("activation").needs_data
    for method in METHODS.values():  # every declared option is a parameter with its default
        params = __import__("inspect").signature(method.function).parameters
        for option in method.options:
            assert params[option.name].default == option.default
    with pytest.raises(TypeError, match="declares default"):
        @register("broken", options=[Option("x", int, 1, "x")])
        def broken(spec, a, b, *, x: int = 2):
            raise AssertionError
    assert "broken" not in METHODS


@pytest.mark.parametrize("name", ["mlp:depth=3,width=128", "resnet20:width=1,norm=bn",
                                  "vgg11:width=0.125,norm=ln"])
def test_fast_weight_matching_equals_reference(trained, name):
    """The optimised implementation finds the same permutation as the literal Algorithm 1."""
    from permalign.match.reference import weight_matching_reference
    _, spec, a = trained(name, 0, 3)
    _, _, b = trained(name, 1, 3)
    for seed in range(2):
        fast = weight_matching(spec, a, b, seed=seed)
        slow = weight_matching_reference(spec, a, b, seed=seed)
        assert same_perm(fast.perm, slow.perm)
        assert fast.info["sweeps"] == slow.info["sweeps"]


def test_restarts_keep_the_best_objective():
    torch.manual_seed(0)
    model, spec, state = random_model("mlp:depth=3,width=3")
    b, truth = planted(spec, state, 5)
    plain = weight_matching(spec, state, b)
    best = weight_matching(spec, state, b, restarts=6)
    assert best.history[-1] >= plain.history[-1] - 1e-9
    assert best.info["restarts"] == 6


@pytest.mark.parametrize("name", ["mlp:depth=3,width=128", "resnet20:width=1,norm=ln",
                                  "vgg11:width=0.125,norm=bn"])
def test_skipping_unchanged_groups_changes_nothing(trained, name):
    """Groups whose neighbours did not move since their last solve are skipped: same search."""
    from permalign.match.weight import _coordinate_descent
    _, spec, a = trained(name, 0, 3)
    _, _, b = trained(name, 1, 3)
    options = dict(max_iter=100, init=None, device=None, solver="scipy", similarity_keys=None)
    for seed in range(3):
        fast = _coordinate_descent(spec, a, b, seed=seed, **options)
        full = _coordinate_descent(spec, a, b, seed=seed, skip_unchanged=False, **options)
        assert same_perm(fast.perm, full.perm)
        assert fast.history == full.history
        assert fast.info["skipped"] > 0 and full.info["skipped"] == 0
        assert fast.info["solves"] + fast.info["skipped"] == full.info["solves"]


def test_structured_members_match_reference():
    """Blocks with offset/outer/inner (flatten, concatenation) give Algorithm 1's answer."""
    from permalign.match.reference import weight_matching_reference
    from permalign.match.weight import matching_objective
    from permalign.spec import Member, PermutationSpec
    g = torch.Generator().manual_seed(0)
    spec = PermutationSpec()
    spec.add_group("c", 6, [Member("conv.weight", 0), Member("conv.bias", 0),
                            Member("fc.weight", 1, inner=4, partial=True),
                            Member("mix.weight", 0, offset=0, partial=True)])
    spec.add_group("d", 5, [Member("fc.weight", 0), Member("fc.bias", 0),
                            Member("mix.weight", 0, offset=6, partial=True),
                            Member("out.weight", 1)])
    shapes = {"conv.weight": (6, 3, 3, 3), "conv.bias": (6,), "fc.weight": (5, 24),
              "fc.bias": (5,), "mix.weight": (11, 7), "out.weight": (2, 5)}
    for trial in range(5):
        a = {k: torch.randn(*s, generator=g) for k, s in shapes.items()}
        b = {k: torch.randn(*s, generator=g) for k, s in shapes.items()}
        fast = weight_matching(spec, a, b, seed=trial)
        slow = weight_matching_reference(spec, a, b, seed=trial)
        assert same_perm(fast.perm, slow.perm)
        assert fast.history[-1] == pytest.approx(matching_objective(spec, a, b, fast.perm),
                                                 rel=1e-5)


def test_auto_solver_picks_by_size(monkeypatch):
    import numpy as np
    from permalign import lap
    monkeypatch.setattr(lap, "has_lapjv", lambda: True)
    monkeypatch.setattr(lap, "has_numba", lambda: True)
    assert lap.choose(64) == "scipy" and lap.choose(lap.LAPJV_FROM) == "lap"
    assert lap.choose(64, warm=True) == "scipy" and lap.choose(lap.JV_FROM, warm=True) == "jv"
    # a group's successive similarities: warm-started at every size from JV_FROM on
    assert lap.choose(lap.LAPJV_FROM, warm=True) == "jv" and lap.choose(10 ** 5, warm=True) == "jv"
    # a run that pays numba's one-off cost for a large group also warm-starts mid-sized ones
    mid = lap.JV_BESIDE_LARGER_FROM
    assert lap.choose(mid, warm=True, paid=True) == "jv"
    assert lap.choose(mid - 1, warm=True, paid=True) == "scipy"
    assert lap.choose(mid, warm=True) == "scipy"
    assert lap.choose(mid, warm=False, paid=True) == "scipy"
    monkeypatch.setattr(lap, "has_numba", lambda: False)
    assert lap.choose(lap.LAPJV_FROM, warm=True) == "lap"
    monkeypatch.setattr(lap, "has_lapjv", lambda: False)
    assert lap.choose(10 ** 5) == "scipy" and lap.choose(10 ** 5, warm=True) == "scipy"
    sim = np.random.default_rng(0).standard_normal((30, 30))
    assert np.array_equal(lap.solve(sim, "auto"), lap.solve(sim, "scipy"))


def test_optional_lapjv_reaches_the_optimum():
    import numpy as np
    pytest.importorskip("lap")
    from permalign import lap
    rng = np.random.default_rng(1)
    for n in (5, 50, 300):
        sim = rng.standard_normal((n, 40)) @ rng.standard_normal((40, n))
        rows = np.arange(n)
        assert sim[rows, lap.solve(sim, "lap")].sum() == pytest.approx(
            sim[rows, lap.solve(sim, "scipy")].sum(), rel=1e-12)


def test_weight_matching_restores_the_thread_count():
    model, spec, state = random_model("mlp:depth=2,width=64")
    before = torch.get_num_threads()
    b, truth = planted(spec, state, 1)
    assert same_perm(weight_matching(spec, state, b).perm, truth)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("name", ["mlp:depth=3,width=128", "vgg11:width=0.125,norm=ln",
                                  "resnet20:width=1,norm=ln"])
def test_incremental_similarity_changes_nothing(trained, name):
    """Updating a similarity by the moved units' columns only changes float rounding (sums in
    another order), which must not change the permutations found."""
    from permalign.match.weight import _coordinate_descent
    _, spec, a = trained(name, 0, 3)
    _, _, b = trained(name, 1, 3)
    options = dict(max_iter=100, init=None, device=None, solver="scipy", similarity_keys=None)
    updates = 0
    for seed in range(3):
        fast = _coordinate_descent(spec, a, b, seed=seed, **options)
        full = _coordinate_descent(spec, a, b, seed=seed, incremental=False, **options)
        updates += fast.info["incremental_updates"]
        assert full.info["incremental_updates"] == 0
        assert same_perm(fast.perm, full.perm)
        assert fast.history == pytest.approx(full.history, rel=1e-6)
    assert updates > 0  # the incremental path was taken


def test_warm_start_of_mid_sized_groups_follows_the_run(monkeypatch):
    """256-unit groups are warm-started only in a run that warm-starts a larger group."""
    from permalign.match.weight import _Matcher, default_similarity_key
    from permalign.permutation import identity_permutation
    from permalign.spec import Member, PermutationSpec
    from permalign.warm_assignment import has_numba
    if not has_numba():
        pytest.skip("numba not installed")
    for widths, paid in (((256, 512), True), ((256, 256), False), ((256, 4096), True)):
        spec = PermutationSpec()
        shapes = {"l0.weight": (widths[0], 8), "l1.weight": (widths[1], widths[0]),
                  "l2.weight": (3, widths[1])}
        spec.add_group("h0", widths[0], [Member("l0.weight", 0), Member("l1.weight", 1)])
        spec.add_group("h1", widths[1], [Member("l1.weight", 0), Member("l2.weight", 1)])
        state = {k: torch.zeros(*v) for k, v in shapes.items()}
        matcher = _Matcher(spec, state, state, identity_permutation(spec),
                           default_similarity_key, None, "auto", 1)
        assert matcher.warm_paid == paid, widths


def test_in_turn_hands_out_no_job_after_an_error():
    """When a job fails, in_turn raises only once no thread runs a job any more."""
    import threading
    import time as clock
    from permalign.threads import in_turn
    done = []

    def job(k):
        clock.sleep(0.005)
        if threading.current_thread() is threading.main_thread():
            raise ValueError("job failed")  # the caller's first job fails; helpers' do not
        done.append(k)
    jobs = [lambda k=k: job(k) for k in range(40)]
    with pytest.raises(ValueError, match="job failed"):
        in_turn(jobs, 2)
    count = len(done)
    clock.sleep(0.05)
    assert len(done) == count


def test_result_does_not_depend_on_the_thread_count():
    """Large products are split by rows over Python threads, and a helper solves a group's
    assignment while the next group's similarity is updated: the same bits as one thread."""
    from permalign import threads
    model, spec, a = random_model("vgg11:width=0.5,norm=ln", seed=0)
    _, _, b = random_model("vgg11:width=0.5,norm=ln", seed=1)
    before = torch.get_num_threads()
    old = threads.PARALLEL_FLOPS
    try:
        threads.PARALLEL_FLOPS = 1e5  # split even these small products
        torch.set_num_threads(1)
        one = weight_matching(spec, a, b, seed=0)
        torch.set_num_threads(3)
        three = weight_matching(spec, a, b, seed=0)
    finally:
        threads.PARALLEL_FLOPS = old
        torch.set_num_threads(before)
    assert same_perm(one.perm, three.perm) and one.history == three.history
    # with helpers, solves ran beside the next group's similarity update: same search
    assert three.info["solves_beside_updates"] > 0 == one.info["solves_beside_updates"]


@pytest.mark.parametrize("name", ["mlp:depth=3,width=32", "resnet20:width=1,norm=ln",
                                  "vgg11:width=0.125,norm=bn"])
def test_kept_rows_of_b_follow_the_permutations(name):
    """Weight matching keeps B's rows per block (as rows, or transposed) and reorders them
    when a neighbour moves (a few units: by columns; many: the whole block, updating the
    similarity by its difference or recomputing it); after any mix of moves they equal B's
    rows gathered afresh, and the cached similarity the fresh product."""
    from permalign.match.weight import _Matcher, default_similarity_key, permuted_rows
    from permalign.permutation import identity_permutation
    _, spec, a = random_model(name)
    _, _, b = random_model(name, seed=1)
    matcher = _Matcher(spec, a, b, identity_permutation(spec), default_similarity_key, None,
                       "scipy", 1)
    generator = torch.Generator().manual_seed(0)
    for step in range(9):
        for group in spec.groups:
            matcher.similarity(group)
        for number, (group, g) in enumerate(spec.groups.items()):
            new = matcher.perm[group].clone()
            if step % 3 == 1:  # a few units swap places: updates by their columns
                idx = torch.randperm(g.size, generator=generator)[:2]
                new[idx] = new[idx.flip(0)]
            elif step % 3 == 0 or number % 3 == 0:  # everything moves (at step % 3 == 2 in
                # every third group: its neighbours' similarities update by whole blocks)
                new = new[torch.randperm(g.size, generator=generator)]
            matcher.set_perm(group, new, 0.0)
    assert matcher.updates > matcher.whole_block_updates > 0
    layouts = {block.transposed for blocks in matcher.blocks.values() for block in blocks
               if block.shape4}
    assert layouts == {True, False}  # both kinds of storage were exercised
    for group, g in spec.groups.items():
        sim = torch.as_tensor(matcher.similarity(group))
        fresh = torch.zeros(g.size, g.size, dtype=torch.float64)
        for block, a_kept, b_kept in zip(matcher.blocks[group], matcher.a_rows[group],
                                         matcher.b_rows[group]):
            expected = permuted_rows(matcher.b[block.key], block.member, g.size, block.others,
                                     matcher.perm)
            assert torch.equal(block.rows(b_kept), expected), (group, block.key)
            fresh += (block.rows(a_kept).double() @ expected.double().T)
        assert torch.allclose(sim, fresh, rtol=1e-5, atol=1e-5), group


def test_matchings_in_two_user_threads_find_what_each_finds_alone():
    """The helper threads are shared by every matching of the process: two run from two
    threads at once (products split over helpers, solves beside updates) give the results
    each gives alone."""
    from concurrent.futures import ThreadPoolExecutor
    from permalign import threads
    runs = []
    for name in ("vgg11:width=0.5,norm=ln", "resnet20:width=2,norm=ln"):
        _, spec, a = random_model(name, seed=0)
        _, _, b = random_model(name, seed=1)
        runs.append((spec, a, b))
    def match(run):  # in a thread of the user's, with 2 threads of its own
        torch.get_num_threads()  # (a thread's first call takes the count last set by any
        torch.set_num_threads(2)  # thread, maybe 1 by the other matching: set it after)
        return weight_matching(*run, seed=0)
    old = threads.PARALLEL_FLOPS
    try:
        threads.PARALLEL_FLOPS = 1e5  # split even these small products
        alone = [weight_matching(*run, seed=0) for run in runs]
        with ThreadPoolExecutor(2) as pool:
            together = list(pool.map(match, runs * 2))
    finally:
        threads.PARALLEL_FLOPS = old
    for solo, (first, second) in zip(alone, zip(together[:2], together[2:])):
        for both in (first, second):
            assert same_perm(solo.perm, both.perm) and solo.history == both.history
            assert both.info["solves_beside_updates"] > 0
