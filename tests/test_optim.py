"""nfx's foreach Adam gives the same updates as fastai's Adam (same state keys, same numbers)."""

import timm
import torch
from fastai.optimizer import Adam

from nfx.train.optim import foreach_adam


def _run(make_opt, steps=4, freeze_body_first=True):
    torch.manual_seed(0)
    m = timm.create_model("test_nfnet", num_classes=2)
    head = list(m.get_classifier().parameters())
    hid = {id(p) for p in head}
    body = [p for p in m.parameters() if id(p) not in hid]
    opt = make_opt([body, head], lr=1e-2)
    opt.set_hyper("lr", [1e-3, 1e-2])  # discriminative: body / head
    some = body[::3]
    for p in some:
        opt.state[p]["do_wd"] = False  # the gains/bias exemption nfx sets
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 2, (4,), generator=g)
    for i in range(steps):
        if freeze_body_first and i == 0:
            opt.freeze()  # first step head only → body params start with a different step count
        elif i == 1:
            opt.unfreeze()
        loss = torch.nn.functional.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return m.state_dict(), opt


def test_foreach_adam_matches_fastai_adam():
    a, opt_a = _run(Adam)
    b, opt_b = _run(foreach_adam)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-6, atol=1e-7, msg=k)
    sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    assert [set(s) for s in sa] == [set(s) for s in sb]
    assert [s.get("step") for s in sa] == [s.get("step") for s in sb]
    assert len({s.get("step") for s in sb}) == 2  # head and body really had different step counts
