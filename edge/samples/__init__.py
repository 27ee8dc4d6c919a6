"""Hard examples: frames worth labelling, chosen on the device and sent redacted to the hub's dataset."""

from roadside.edge.samples.selector import (
    BudgetPolicy,
    Decision,
    HardExampleSelector,
    SelectorPolicy,
    Verdict,
)

__all__ = ["BudgetPolicy", "Decision", "HardExampleSelector", "SelectorPolicy", "Verdict"]
