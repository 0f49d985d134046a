"""optimizer.state as a table that counts its changes."""
from __future__ import annotations

import functools
import itertools
from collections import defaultdict

# NOTE: [state changes]
# A live C++ step plan holds the state tensors themselves, and the Python plan each parameter's state dict.
# A state tensor, a parameter's whole state dict or the whole table replaced by hand
# (opt.state[p]["exp_avg"] = t, opt.state[p] = {...}, opt.state.clear(), opt.state = defaultdict(dict))
# would go unseen, and the step would update the old tensors, silently. So the table and every parameter's
# dict count each change in one counter, and the plans are keyed by the table's serial number and that
# count. A plain dict stored in the table is copied into a counting one (so later changes through the
# plain dict itself are not seen: change the state through opt.state).

_SERIALS = itertools.count()


class _CountsChanges:
    """Every mutating dict method counts into `self.changes[0]`, and stores through `_stored`."""

    __slots__ = ()

    def _stored(self, value):
        return value

    def __setitem__(self, key, value):
        self.changes[0] += 1
        super().__setitem__(key, self._stored(value))

    def __delitem__(self, key):
        self.changes[0] += 1
        super().__delitem__(key)

    def pop(self, *args):
        self.changes[0] += 1
        return super().pop(*args)

    def popitem(self):
        self.changes[0] += 1
        return super().popitem()

    def clear(self):
        self.changes[0] += 1
        super().clear()

    def update(self, *args, **kwargs):
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return self[key]

    def __ior__(self, other):
        self.update(other)
        return self


class ParamState(_CountsChanges, dict):
    """A parameter's state. `changes` is its table's counter; one made without a table counts alone (a
    table stores it again under its own)."""

    __slots__ = ("changes",)

    def __init__(self, *args, changes: list[int] | None = None, **kwargs):
        self.changes = [0] if changes is None else changes
        dict.__init__(self, *args, **kwargs)

    def __reduce__(self):  # copies and pickles: the entries; the table they land in gives the counter
        return type(self), (dict(self),)


class StateTable(_CountsChanges, defaultdict):
    """optimizer.state: parameter -> ParamState, all counting in the table's counter."""

    def __init__(self, default_factory=None, *args):
        """`default_factory` is always ParamState under this table's counter; entries (`args`, as
        defaultdict.copy passes them) are stored one by one, so that they count there too."""
        changes = [0]
        super().__init__(functools.partial(ParamState, changes=changes))
        self.changes = changes
        self.serial = next(_SERIALS)  # unlike id(), never reused by a later table
        self.update(*args)

    def __reduce__(self):  # copies and pickles: a new table (counter, serial) holding the entries
        return type(self), (), None, None, iter(self.items())

    def _stored(self, value):
        if isinstance(value, dict) and not (isinstance(value, ParamState) and value.changes is self.changes):
            return ParamState(value, changes=self.changes)
        return value

    @classmethod
    def of(cls, state: dict) -> StateTable:
        return cls(None, state)
