"""Bad input gets a clear error naming the argument, and nothing changes: no half-applied step and no
corrupted state."""
import collections
import copy
import math

import pytest
import torch

import gradfused as gf
from optim_table import all_states


def fill(params):
    for p in params:
        p.grad = torch.randn_like(p)


def stepped(make, n=2, shapes=((10,), (3, 4))):
    params = [torch.randn(s, requires_grad=True) for s in shapes]
    opt = make(params)
    for _ in range(n):
        fill(params)
        opt.step()
    return opt, params


def frozen(opt, params):
    return [p.detach().clone() for p in params], [(k, v.clone()) for k, v in all_states(opt)]


def assert_unchanged(opt, params, before):
    now = frozen(opt, params)
    assert all(torch.equal(a, b) for a, b in zip(now[0], before[0]))
    assert [k for k, _ in now[1]] == [k for k, _ in before[1]]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(now[1], before[1]))


BAD_HYPERPARAMETERS = [
    (gf.AdamW, "lr", -1e-3), (gf.AdamW, "lr", math.nan), (gf.AdamW, "lr", math.inf),
    (gf.Adam, "betas", (1.0, 0.999)), (gf.Adam, "betas", (0.9, -0.1)), (gf.Adam, "betas", (0.9,)),
    (gf.Adam, "eps", -1e-8), (gf.Adam, "eps", math.inf), (gf.Adam, "weight_decay", -0.1),
    (gf.Adam, "weight_decay", math.nan), (gf.RAdam, "betas", (0.9, math.nan)), (gf.RAdam, "eps", math.nan),
    (gf.AdEMA, "betas", (0.9, 0.999)), (gf.AdEMA, "betas", (0.9, 0.999, 1.5)), (gf.AdEMA, "alpha", -1.0),
    (gf.AdEMA, "t_alpha_beta3", 0), (gf.AdEMA, "t_alpha_beta3", math.inf),
    (gf.PersistentSGD, "decay", -0.5), (gf.PersistentSGD, "decay", math.nan), (gf.PersistentSGD, "dampening", 1.5),
    (gf.PersistentSGD, "weight_decay", math.inf), (gf.AdamW, "maximize", "yes"), (gf.AdamW, "fused", "no"),
    (gf.NAdam, "momentum_decay", -1.0), (gf.NAdam, "betas", (0.9, 1.0)), (gf.RMSprop, "alpha", 1.0),
    (gf.RMSprop, "momentum", -0.1), (gf.RMSprop, "centered", 1), (gf.GradientAscent, "clip_value", 0.0),
    (gf.GradientAscent, "lr_decay", math.nan), (gf.GradientAscent, "warmup_steps", -1),
    (gf.GradientAscent, "beta", 1.0), (gf.GradientAscent, "momentum", math.inf),
]


@pytest.mark.parametrize("cls, name, value", BAD_HYPERPARAMETERS, ids=lambda x: repr(x) if not isinstance(x, type) else x.__name__)
def test_bad_hyperparameter_is_rejected_by_name(cls, name, value):
    with pytest.raises(ValueError, match=rf"{cls.__name__}: Invalid .*\(expected {name}\b"):
        cls([torch.randn(3, requires_grad=True)], **{name: value})


@pytest.mark.parametrize("betas", [(0.0, 0.999, 0.9999), (0.9, 0.999, 0.0)])
def test_adema_warm_up_needs_positive_beta1_and_beta3(betas):
    with pytest.raises(ValueError, match=r"AdEMA: t_alpha_beta3 needs beta1 > 0 and beta3 > 0"):
        gf.AdEMA([torch.randn(3, requires_grad=True)], betas=betas, t_alpha_beta3=10)
    gf.AdEMA([torch.randn(3, requires_grad=True)], betas=betas)  # without the warm-up they are fine


def test_nesterov_needs_decay_and_no_dampening():
    with pytest.raises(ValueError, match="nesterov=True requires decay > 0 and dampening = 0"):
        gf.PersistentSGD([torch.randn(3, requires_grad=True)], decay=0.9, dampening=0.1, nesterov=True)


@pytest.mark.parametrize("name, value", [("lr", math.nan), ("betas", (0.9, 1.0)), ("eps", -1.0)])
def test_bad_hyperparameter_set_later_fails_the_step_and_changes_nothing(name, value):
    opt, params = stepped(lambda p: gf.Adam([{"params": p[:1]}, {"params": p[1:]}], lr=1e-2))
    for p in params:
        p.grad = torch.randn_like(p)
    before = frozen(opt, params)
    opt.param_groups[1][name] = value  # the second group: the first must not have stepped either
    with pytest.raises(ValueError, match=rf"Invalid .*\(expected {name}\b"):
        opt.step()
    assert_unchanged(opt, params, before)


def test_bad_group_in_add_param_group_is_rejected():
    opt = gf.AdamW([torch.randn(3, requires_grad=True)])
    with pytest.raises(ValueError, match="Invalid learning rate"):
        opt.add_param_group({"params": [torch.randn(2, requires_grad=True)], "lr": -1.0})
    assert len(opt.param_groups) == 1


def test_bad_alignment_hyperparameters():
    base = gf.AdamW([torch.randn(3, requires_grad=True)])
    with pytest.raises(ValueError, match="GradientAlignment: Invalid beta"):
        gf.GradientAlignment(base, beta=1.0)
    with pytest.raises(ValueError, match="GradientAlignment: Invalid epsilon"):
        gf.GradientAlignment(base, eps=math.nan)
    with pytest.raises(TypeError, match="base_optimizer must be a torch.optim.Optimizer"):
        gf.GradientAlignment([torch.randn(3)])


@pytest.mark.parametrize("wrap", [False, True], ids=["AdamW", "Align(AdamW)"])
def test_sparse_gradient_fails_the_step_and_changes_nothing(wrap):
    opt, params = stepped(lambda p: gf.GradientAlignment(gf.AdamW(p)) if wrap else gf.AdamW(p))
    params[0].grad = torch.randn(10)
    params[1].grad = torch.randn(3, 4).to_sparse()
    before = frozen(opt, params)
    with pytest.raises(RuntimeError, match=r"params\[1\] is sparse; AdamW does not support sparse gradients"):
        opt.step()
    assert_unchanged(opt, params, before)


@pytest.mark.parametrize("plan_live", [False, True], ids=["first steps", "through the C++ step plan"])
@pytest.mark.parametrize("fused", [None, True, False])
def test_a_state_on_another_device_fails_before_anything_is_written(fused, plan_live):
    """NOTE: [one device per call]: a state moved to meta (which outranks the CPU in dispatch, and whose
    fake kernel would do nothing) fails the step with the tensor named, and nothing is written: not even
    the parameters of the other group."""
    opt, params = stepped(lambda ps: gf.Adam([{"params": ps[:1]}, {"params": ps[1:]}], fused=fused),
                          n=3 if plan_live else 1)
    opt.state[params[1]]["exp_avg"] = opt.state[params[1]]["exp_avg"].to("meta")
    for p in params:
        p.grad = torch.randn_like(p)
    before = [p.detach().clone() for p in params]
    with pytest.raises(RuntimeError, match=r"'exp_avg' of param group 1, params\[0\] is on meta but the parameter "
                                           r"is on cpu; all tensors of one step must be on one device"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(params, before))


def _zero_exp_avg(ours, theirs, how):
    """Sets parameter 0's exp_avg to zeros in both optimizers: in gradfused's `how`, in torch's in place."""
    p, q = ours.param_groups[0]["params"][0], theirs.param_groups[0]["params"][0]
    zeroed = {k: torch.zeros_like(v) if k == "exp_avg" else v.clone() for k, v in ours.state[p].items()}
    if how == "a state tensor":
        ours.state[p]["exp_avg"] = torch.zeros_like(p)
    elif how == "a whole state dict":
        ours.state[p] = zeroed
    elif how == "state.update":
        ours.state.update({p: zeroed})
    elif how == "|= on a state dict":
        ours.state[p] |= {"exp_avg": torch.zeros_like(p)}
    theirs.state[q]["exp_avg"].zero_()


def _reset(ours, theirs, how):
    if how == "state.clear()":
        ours.state.clear()
        theirs.state.clear()
    else:  # a new table
        ours.state, theirs.state = collections.defaultdict(dict), collections.defaultdict(dict)


REPLACEMENTS = {**{how: _zero_exp_avg for how in ("a state tensor", "a whole state dict", "state.update",
                                                   "|= on a state dict")},
                **{how: _reset for how in ("state.clear()", "a new state table")}}


@pytest.mark.parametrize("copied", [False, True], ids=["", "in a deep copy"])
@pytest.mark.parametrize("how", REPLACEMENTS)
def test_a_state_replaced_by_hand_is_the_one_stepped(how, copied):
    """NOTE: [state changes] in gradfused/optim/_state_table.py: under a live C++ step plan, which holds the
    state tensors, state replaced by hand (a tensor, a parameter's dict, the table: a reset) is the one the
    following steps read and write, as in torch.optim, and the one state_dict() saves; in a deep copy too."""
    opt, params = stepped(lambda ps: gf.Adam(ps), n=3)
    if copied:
        opt = copy.deepcopy(opt)
        params = [p for group in opt.param_groups for p in group["params"]]
        for _ in range(3):  # the copy's own plans go live
            fill(params)
            opt.step()
    twin, twin_params = stepped(lambda ps: torch.optim.Adam(ps), n=0)
    with torch.no_grad():
        for p, q in zip(params, twin_params):
            q.copy_(p)
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))
    REPLACEMENTS[how](opt, twin, how)
    for _ in range(3):
        fill(params)
        for a, b in zip(params, twin_params):
            b.grad = a.grad.clone()
        opt.step()
        twin.step()
    for a, b in zip(params, twin_params):
        torch.testing.assert_close(a, b)
    ours, theirs = opt.state_dict()["state"], twin.state_dict()["state"]
    assert ours.keys() == theirs.keys()
    for k in theirs:
        for key, value in theirs[k].items():
            torch.testing.assert_close(ours[k][key], value)


def test_complex_half_parameter_is_rejected():  # complex64 and complex128 step as real views
    with pytest.raises(ValueError, match=r"params\[1\] has dtype torch.complex32; expected .*complex64 or complex128"):
        gf.Adam([torch.randn(3, requires_grad=True), torch.randn(3, dtype=torch.complex32, requires_grad=True)])


def test_unsupported_dtype_is_rejected():
    with pytest.raises(ValueError, match=r"params\[0\] has dtype torch.int64"):
        gf.Adam([torch.zeros(3, dtype=torch.int64)])


@pytest.mark.skipif(not hasattr(torch.Tensor, "grad_dtype"),
                    reason="this torch refuses a gradient of another dtype itself (Tensor.grad_dtype is newer)")
def test_gradient_of_another_dtype_fails_and_changes_nothing():
    opt, params = stepped(gf.PersistentSGD)
    params[0].grad = torch.randn(10)
    params[1].grad_dtype = None  # torch refuses a gradient of another dtype unless told otherwise
    params[1].grad = torch.randn(3, 4, dtype=torch.float64)
    before = frozen(opt, params)
    with pytest.raises(RuntimeError, match=r"params\[1\] has dtype torch.float64 but the parameter has torch.float32"):
        opt.step()
    assert_unchanged(opt, params, before)


FOREIGN_STATE_DICTS = [
    # another optimizer's state for the same parameters
    (lambda: stepped(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))[0],
     r"keys \['momentum_buffer'\] that AdamW does not use"),
    # AdamW's state for parameters of other shapes
    (lambda: stepped(gf.AdamW, shapes=((10,), (4, 3)))[0],
     r"'exp_avg' has shape \(4, 3\) but the parameter has shape \(3, 4\)"),
]


@pytest.mark.parametrize("make_foreign, message", FOREIGN_STATE_DICTS, ids=["other-optimizer", "other-shapes"])
def test_foreign_state_dict_is_rejected_and_changes_nothing(make_foreign, message):
    foreign = make_foreign().state_dict()
    opt, params = stepped(gf.AdamW)
    before = frozen(opt, params)
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(copy.deepcopy(foreign))
    assert_unchanged(opt, params, before)


def test_state_dict_missing_a_state_is_rejected():
    radam, _ = stepped(gf.RAdam)
    adema, params = stepped(gf.AdEMA)
    with pytest.raises(ValueError, match=r"lacks \['exp_avg_slow'\]"):
        adema.load_state_dict(copy.deepcopy(radam.state_dict()))


def test_state_dict_with_other_group_layout_is_rejected():
    opt, params = stepped(gf.AdamW)
    two_groups = gf.AdamW([{"params": params[:1]}, {"params": params[1:]}])
    with pytest.raises(ValueError, match="has 2 parameter groups but this optimizer has 1"):
        opt.load_state_dict(two_groups.state_dict())


def test_alignment_state_dict_of_a_plain_optimizer_is_rejected():
    opt, params = stepped(lambda p: gf.GradientAlignment(gf.AdamW(p)))
    plain, _ = stepped(gf.AdamW)
    with pytest.raises(ValueError, match="expected a dict with keys 'base' and 'alignment'"):
        opt.load_state_dict(plain.state_dict())


# ---- the ops themselves check their arguments by name, before writing anything ----

def adam_args(n=2, numel=5):
    params = [torch.randn(numel) for _ in range(n)]
    return dict(
        params=params, grads=[torch.randn(numel) for _ in range(n)], exp_avgs=[torch.zeros(numel) for _ in range(n)],
        exp_avg_sqs=[torch.zeros(numel) for _ in range(n)], max_exp_avg_sqs=[],
        state_steps=[torch.zeros(()) for _ in range(n)],
    )


def call_adam(args, **overrides):
    kw = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False,
              amsgrad=False)
    kw.update(overrides)
    torch.ops.gradfused.adam_(*args.values(), **kw)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: a["grads"].pop(), "grads has 1 tensors but params has 2"),
        (lambda a: a["exp_avgs"].__setitem__(1, torch.zeros(4)), r"exp_avgs\[1\] has shape \[4\] but params\[1\] has \[5\]"),
        (lambda a: a["grads"].__setitem__(0, torch.randn(5).double()), r"grads\[0\] has dtype Double but params\[0\] has Float"),
        (lambda a: [a[k].__setitem__(1, a[k][1].double()) for k in ("params", "grads", "exp_avgs", "exp_avg_sqs")],
         r"params\[1\] has dtype Double but params\[0\] has Float"),
        (lambda a: a["grads"].__setitem__(1, torch.randn(5).to_sparse()), r"gradfused.adam_: grads\[1\] is sparse"),
        (lambda a: a["state_steps"].__setitem__(0, torch.zeros(2)), r"state_steps\[0\] must be a one-element"),
    ],
)
def test_op_checks_name_the_argument(mutate, message):
    args = adam_args()
    mutate(args)
    before = [t.clone() for t in args["params"] + args["exp_avgs"]]
    with pytest.raises(RuntimeError, match=message):
        call_adam(args)
    assert all(torch.equal(a, b) for a, b in zip(args["params"] + args["exp_avgs"], before))


@pytest.mark.parametrize("name, value", [("lr", math.nan), ("beta1", 1.0), ("eps", -1.0), ("weight_decay", math.inf)])
def test_op_rejects_bad_hyperparameters(name, value):
    with pytest.raises(RuntimeError, match=f"invalid {name}"):
        call_adam(adam_args(), **{name: value})


@pytest.mark.parametrize("wrapper", [gf.GradientAlignment, gf.Lookahead], ids=lambda c: c.__name__)
def test_wrappers_refuse_wrapping_themselves_and_non_bool_fused(wrapper):
    inner = wrapper(gf.AdamW([torch.randn(3, requires_grad=True)]))
    with pytest.raises(ValueError, match=f"already a {wrapper.__name__}"):
        wrapper(inner)
    for fused in (1, 0, "yes"):
        with pytest.raises(ValueError, match="Invalid fused value"):
            wrapper(gf.AdamW([torch.randn(3, requires_grad=True)]), fused=fused)


def test_persistent_sgd_decay_above_one_is_refused():
    with pytest.raises(ValueError, match=r"Invalid decay value: 1.5 \(expected decay to be a finite number in \[0, 1\]\)"):
        gf.PersistentSGD([torch.randn(3, requires_grad=True)], decay=1.5)
    gf.PersistentSGD([torch.randn(3, requires_grad=True)], decay=1.0)  # pure accumulation stays allowed


# ---- NOTE: [every element once]: tensors whose elements share memory are refused before any write ----

def test_expanded_parameter_is_refused_when_added():
    with pytest.raises(ValueError, match=r"AdamW: params\[1\] \(shape \(2, 3\), strides \(0, 1\)\) has elements "
                                         r"that share memory"):
        gf.AdamW([torch.randn(3, requires_grad=True), torch.zeros(3).expand(2, 3).requires_grad_()])


@pytest.mark.parametrize("where", ["params", "exp_avgs", "grads"])
def test_op_refuses_overlapping_tensors_before_writing(where):
    """The second tensor of a list is an expanded view: the call fails and the first tensor, which comes
    earlier in every loop, is unchanged (before, its update was written and the copy back then failed).
    The gradients are written only with grad_scale (NOTE: [GradScaler and .grad])."""
    args = adam_args()
    args[where][1] = torch.randn(1).expand(5)
    def first():
        return [args["params"][0], args["exp_avgs"][0], args["exp_avg_sqs"][0], args["grads"][0], *args["state_steps"]]

    before = [t.clone() for t in first()]
    with pytest.raises(RuntimeError, match=rf"gradfused.adam_: {where}\[1\] \(shape \[5\], strides \[0\]\) has "
                                           "elements that share memory"):
        call_adam(args, grad_scale=torch.tensor(2.0))
    assert all(torch.equal(a, b) for a, b in zip(first(), before))


def test_expanded_gradient_is_read_without_grad_scale():
    args = adam_args()
    args["grads"][1] = torch.randn(1).expand(5)
    call_adam(args)  # read only: a dense copy serves
    assert torch.isfinite(args["params"][1]).all()


def test_op_accepts_sliced_and_transposed_views():
    """Views that hold each element once (a slice with a step, a transpose) are stepped through a dense
    copy, equal to the contiguous step."""
    base = torch.randn(6, 8)
    views = [base[:, ::2], base.t()[1:5]]
    dense = [v.contiguous() for v in views]
    for params in (views, dense):
        n = len(params)
        torch.ops.gradfused.adam_(params, [torch.ones_like(p) for p in params], [torch.zeros_like(p) for p in params],
                                  [torch.zeros_like(p) for p in params], [], [torch.zeros(()) for _ in range(n)],
                                  lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                                  decoupled_weight_decay=False, amsgrad=False)
    for v, d in zip(views, dense):
        assert torch.equal(v, d)
