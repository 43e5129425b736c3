"""``hydra/sweeper=propbench``: Hydra's basic sweeper without composing twice what
``python -m propbench`` has already composed and validated.

Before a sweep starts, the propbench CLI composes and validates the base overrides and
each sweep value on its own (:func:`propbench.cli.check`) and records those override
lists in ``propbench.cli.PRECHECKED``. The basic sweeper then composes every job once more
to catch composition errors early, and the launcher a third time to run it: about 0.1 s a
job. This sweeper skips the second composition for exactly the jobs already checked and
validates every other job (combinations of two swept keys, sweeps from a config's
``hydra.sweeper.params``) as the basic sweeper does. It is a Hydra plugin, so it lives in
the ``hydra_plugins`` namespace package.
"""

# no `from __future__ import annotations`: Hydra executes plugin modules outside sys.modules,
# where dataclasses cannot resolve string annotations

from dataclasses import dataclass
from typing import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore


@dataclass
class PropbenchSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.propbench_sweeper.propbench_sweeper.PropbenchSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="propbench", node=PropbenchSweeperConf,
                             provider="propbench")


class PropbenchSweeper(BasicSweeper):
    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        from propbench.cli import PRECHECKED

        unchecked = [job for job in batch if frozenset(job) not in PRECHECKED]
        if unchecked:
            super().validate_batch_is_legal(unchecked)
