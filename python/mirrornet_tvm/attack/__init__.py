"""Security evaluation: how much of a protected model a thief who owns the normal world can steal.

The threat model and the figures follow the field (DarkneTZ, ShadowNet, TEESlice, MirrorNet): the thief
has the backbone's architecture and weights and the tapped feature maps, and a small labelled budget
drawn from the training split (never a test image). It tries

* illegal use: the backbone alone;
* fine-tuning every layer of the stolen backbone;
* a fresh linear classifier on each tapped feature map (the backbone frozen);

against the black-box baseline (the same architecture from random initialisation, same data) and the
white-box reference (the unprotected original fine-tuned on the same data). Every attack picks its
learning rate on a held-out part of the thief's own budget. Secure means every attack on the stolen
backbone stays within 1.05x the black-box accuracy (TEESlice's rule); the share of the black-box to
white-box gap an attack closes is reported too.

What the protection has to defeat, measured on the zoo LeNet (Fashion-MNIST, original 91.07%; three attack
seeds, table by ``bench/security_table.py``): a linear probe on a tap of the original network already
beats the black-box baseline at 60 labels (1.08x on ``b1_maxpool``, 1.14x on ``b2_relu``), and so does
fine-tuning the stolen convolutions once the backbone holds both stages (1.15x from ``b2_relu``). The
``adversarial`` objective (a linear attacker on the tap, trained on the whole split) removes the probe's
advantage but not fine-tuning's while the backbone keeps both convolutions. Fed from ``b1_maxpool``
(the backbone is the first convolution only; CPM 1/4, 5.8% of FLOPs) with distillation from the original
(``--adv 0.07 --distill 1``) it keeps every attack within 1.03x black-box at 60 and 600 labels, at 87.9%
authorized; ``--adv 0.1`` leaves every attack below black-box at 86.3%, ``--adv 0.05`` lets the probe
reach 1.06x at 88.1%. The 1/4 CPM itself caps that tap at about 88.7% even on untouched features, so
no weight brings it within a point of the original. The ``fewshot`` objective
(:mod:`mirrornet_tvm.degradation`) lowers fine-tuning's advantage on the default ``b2_relu`` strategy
(1.15x to 1.08x at ``--adv 0.5``, 87.6% authorized) but not under the 1.05x rule.

Modules: :mod:`.thief_data` (budgets, disjoint draws), :mod:`.victim` (what is attacked),
:mod:`.attacks` (training with learning-rate search), :mod:`.evaluate` (the run, caching, attack.json),
:mod:`.report` (summary, verdict, table), :mod:`.floor` (the evaluation as a floor for strategy search).
"""
from .attacks import BLACKBOX, CONTROL_ORIGINAL, CONTROL_PIXELS, CONTROL_RANDOM, ILLEGAL, PROBE_PREFIX, STEALING, WHITEBOX
from .evaluate import (DEFAULT_BUDGETS, DEFAULT_LRS, DEFAULT_SEEDS, AttackConfig, attack_artifact, evaluate,
                       security_check)
from .floor import SecureChoice, SecurityFloor, first_secure
from .report import (SECURE_RATIO, AttackRun, SecurityReport, SummaryRow, attack_label, format_table, gap_closed,
                     summary_lines)
from .thief_data import budget_label, budget_samples, disjoint_pool, thief_split
from .victim import Victim, random_like

__all__ = [
    "AttackConfig", "AttackRun", "SecurityReport", "SummaryRow", "Victim", "SecurityFloor", "SecureChoice",
    "attack_artifact", "evaluate", "security_check", "first_secure", "format_table", "summary_lines", "attack_label", "gap_closed",
    "budget_label", "budget_samples", "disjoint_pool", "thief_split", "random_like",
    "DEFAULT_BUDGETS", "DEFAULT_SEEDS", "DEFAULT_LRS", "SECURE_RATIO",
    "STEALING", "BLACKBOX", "WHITEBOX", "ILLEGAL", "PROBE_PREFIX", "CONTROL_RANDOM", "CONTROL_ORIGINAL",
    "CONTROL_PIXELS",
]
