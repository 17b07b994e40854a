"""The option tables: one validation function, one default per option, engines that keep each
option in one place."""

import copy
import pathlib

import pytest

from hogwild_mts.core.params import (Checked, Choice, Flag, Fraction, Integer, NonNegative, Option,
                                     Optional, Options, Positive, Table, defaults_table, validate)
from hogwild_mts.engines.linear import ENGINE_OPTIONS, Engine
from hogwild_mts.engines.networks import NETWORK_OPTIONS
from hogwild_mts.engines.simulated import NETWORK_SIMULATOR_OPTIONS, SIMULATOR_OPTIONS, Simulator
from hogwild_mts.estimators import (CLASSIFIER_OPTIONS, REGRESSOR_OPTIONS, HogwildClassifier,
                                    HogwildRegressor)

TABLES = {"Engine": ENGINE_OPTIONS, "TorchEngine": NETWORK_OPTIONS, "Simulator": SIMULATOR_OPTIONS,
          "NetworkSimulator": NETWORK_SIMULATOR_OPTIONS,
          "HogwildClassifier": CLASSIFIER_OPTIONS, "HogwildRegressor": REGRESSOR_OPTIONS}
API_DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "api.md"


def _table():
    def doubled(values):
        return {"twice": 2 * values["count"]}

    return Table((Option("count", Integer(1), 3, "run"), Option("rate", Optional(Positive()), None, "run"),
                  Option("kind", Choice(("a", "b")), "a", "run")), rules=(doubled,))


def test_validate_checks_in_table_order_fills_defaults_and_adds_what_rules_derive():
    options = validate(_table(), {"rate": 2})
    assert dict(options) == {"count": 3, "rate": 2.0, "kind": "a", "twice": 6}
    assert options.count == options["count"] == 3 and isinstance(options.rate, float)
    with pytest.raises(ValueError, match=r"^count must be an integer >= 1, got 0$"):
        validate(_table(), {"count": 0, "kind": "c"})  # the first option in table order
    with pytest.raises(ValueError, match=r"^kind must be one of \['a', 'b'\], got 'c'$"):
        validate(_table(), {"kind": "c"})
    with pytest.raises(TypeError, match="unknown options \\['speed'\\]"):
        validate(_table(), {"speed": 1})


@pytest.mark.parametrize("constraint,good,converted,bad,message", [
    (Integer(0), 3, 3, True, "n must be an integer >= 0, got True"),
    (Positive(), 2, 2.0, 0, "n must be a finite number > 0, got 0"),
    (NonNegative(), 0, 0.0, float("inf"), "n must be a finite number >= 0, got inf"),
    (Fraction(allow_zero=True, allow_one=False), 0, 0.0, 1, r"n must be a finite number in \[0, 1\), got 1"),
    (Choice(("x",)), "x", "x", "y", r"n must be one of \['x'\], got 'y'"),
    (Optional(Integer(1)), None, None, 0, "n must be an integer >= 1, got 0"),
])
def test_constraints_convert_or_name_the_value_and_what_is_allowed(constraint, good, converted, bad, message):
    assert constraint("n", good) == converted and type(constraint("n", good)) is type(converted)
    with pytest.raises(ValueError, match=f"^{message}$"):
        constraint("n", bad)
    assert str(constraint)  # each says what it allows, for the defaults table


def test_flags_and_checked_values_pass_through():
    assert Flag()("n", 1) is True and Checked("anything")("n", ["x"]) == ["x"]


def test_options_are_read_only_and_replace_makes_a_copy():
    options = Options({"a": 1, "b": 2})
    changed = options.replace(b=3)
    assert (options.b, changed.b, changed.a) == (2, 3, 1)
    with pytest.raises(KeyError):
        options.replace(c=1)
    with pytest.raises(AttributeError, match="no option 'c'"):
        options.c
    with pytest.raises(TypeError):
        options["a"] = 5
    assert copy.deepcopy(options) == options


def test_an_option_appears_once_per_table():
    with pytest.raises(ValueError, match=r"options \['a'\] appear twice"):
        Table((Option("a", Flag(), True, "run"), Option("a", Flag(), False, "run")))


@pytest.mark.parametrize("name", sorted(TABLES))
def test_each_engine_signature_defaults_are_its_table_defaults(name):
    import inspect

    from hogwild_mts.engines.networks import TorchEngine
    from hogwild_mts.engines.simulated import NetworkSimulator

    cls = {"Engine": Engine, "TorchEngine": TorchEngine, "Simulator": Simulator,
           "NetworkSimulator": NetworkSimulator,
           "HogwildClassifier": HogwildClassifier, "HogwildRegressor": HogwildRegressor}[name]
    table = TABLES[name]
    signature = inspect.signature(cls.__init__).parameters
    assert set(table.names) == set(signature) - {"self"} - ({"model"} if "model" in signature else set())
    assert {option: signature[option].default for option in table.names} == dict(table.defaults)


def test_an_engine_reads_each_option_from_its_validated_options():
    engine = Engine(workers=1, epochs=3, progress=False)
    assert engine.epochs == engine.options.epochs == 3 and "epochs" not in vars(engine)
    assert engine.policy is engine.options.policy and engine.lr == 0.5
    assert engine.checkpoints is None and engine.ray_options is None and engine.start_method
    with pytest.raises(AttributeError, match="'Engine' object has no attribute 'nothing'"):
        engine.nothing
    copied = copy.copy(engine)
    copied.options = copied.options.replace(epochs=7)
    assert (copied.epochs, engine.epochs) == (7, 3)


def test_the_simulator_derives_its_staleness_source_when_validated():
    simulator = Simulator(workers=3, staleness="poisson")
    assert callable(simulator.draw_tau) and simulator.eval_every is None and not simulator.progress


@pytest.mark.parametrize("name", sorted(TABLES))
def test_docs_api_lists_each_option_table(name):
    assert defaults_table(TABLES[name]) in API_DOC.read_text(), (
        f"docs/api.md: the {name} table is out of date; paste defaults_table({name} options)")
