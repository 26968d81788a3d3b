import pytest

from p2pllm_abm import ConfigError, P2PLLMModel, load_config
from p2pllm_abm.config import Config, initial_distribution, validate


def test_paper_28_setup():
    cfg = load_config("paper_28")
    assert cfg.network.peers == 28 and cfg.network.stages == 4
    assert initial_distribution(cfg.network) == [10, 4, 10, 4]
    assert list(cfg.network.cost_range) == [1.0, 50.0] and list(cfg.network.latency_range) == [1.0, 20.0]
    assert (cfg.network.initial_price, cfg.market.alpha, cfg.market.eta, cfg.market.temperature) == (1.0, 0.5, 1.0, 1.0)


def test_paper_table1_setup_and_overrides():
    cfg = load_config("paper_table1", overrides=["market.temperature=2.0", "run.steps=2000", "seed=7"])
    assert initial_distribution(cfg.network) == [78, 52, 34, 36]
    assert (cfg.market.temperature, cfg.run.steps, cfg.seed) == (2.0, 2000, 7)
    assert cfg.report.reference == "paper_table1"


def test_default_distribution_splits_evenly():
    cfg = Config()
    cfg.network.peers, cfg.network.stages = 10, 4
    assert initial_distribution(cfg.network) == [3, 3, 2, 2]


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("market.alpha=1.5", "market.alpha"),
        ("market.alpha=-0.1", "market.alpha"),
        ("market.eta=0", "market.eta"),
        ("market.eta=-1", "market.eta"),
        ("market.temperature=0", "market.temperature"),
        ("market.demand=0", "market.demand"),
        ("market.update_rule=magic", "market.update_rule"),
        ("market.price_floor=-1", "market.price_floor"),
        ("network.cost_range=[-1.0,5.0]", "network.cost_range"),
        ("network.cost_range=[5.0,1.0]", "network.cost_range"),
        ("network.latency_range=[1.0]", "network.latency_range"),
        ("network.initial_distribution=[10,4,10,3]", "network.initial_distribution"),
        ("network.initial_distribution=[14,0,10,4]", "network.initial_distribution"),
        ("network.initial_distribution=[14,10,4]", "network.initial_distribution"),
        ("network.initial_price=-1", "network.initial_price"),
        ("network.span_length_probs=[0.5,0.6]", "network.span_length_probs"),
        ("network.span_length_probs=[-0.5,1.5]", "network.span_length_probs"),
        ("network.span_length_probs=[0.2,0.2,0.2,0.2,0.2]", "network.span_length_probs"),
        ("network.span_length_probs=[]", "network.span_length_probs"),
        ("network.span_length_probs=[0.5,0.5]", "allocation.enabled"),
        ("clients.routing=teleport", "clients.routing"),
        ("clients.request_classes=0", "clients.request_classes"),
        ("allocation.period=0", "allocation.period"),
        ("allocation.move_fraction=0", "allocation.move_fraction"),
        ("allocation.hysteresis=-0.5", "allocation.hysteresis"),
        ("clients.request_rate=2", "clients.request_rate"),
        ("clients.alpha_distribution=uniform", "clients.alpha_params"),
        ("clients.alpha_distribution=gamma", "clients.alpha_distribution"),
        ("run.record_interval=0", "run.record_interval"),
        ("report.table_steps=[0,7]", "report.table_steps"),
        ("report.reference=nature2030", "report.reference"),
    ],
)
def test_out_of_range_values_name_field_value_and_range(override, field):
    with pytest.raises(ConfigError) as err:
        load_config("paper_28", overrides=[override])
    assert err.value.field == field
    message = str(err.value)
    assert message.startswith(field) and "allowed" in message
    assert repr(err.value.value) in message


def test_model_rejects_bad_config_before_running():
    cfg = Config()
    cfg.market.temperature = -2.0
    with pytest.raises(ConfigError, match="market.temperature"):
        P2PLLMModel(cfg)


def test_validate_returns_config_unchanged():
    cfg = load_config("paper_28")
    assert validate(cfg) is cfg


def test_spans_need_path_routing():
    with pytest.raises(ConfigError, match="clients.routing") as err:
        load_config("paper_28", overrides=["network.span_length_probs=[0.5,0.5]", "allocation.enabled=false"])
    assert err.value.value == "stage"
    cfg = load_config("paper_28", overrides=["network.span_length_probs=[0.5,0.5]", "allocation.enabled=false",
                                             "clients.routing=path"])
    assert cfg.network.span_length_probs == [0.5, 0.5]
    # zero mass on longer spans is the one-stage network: reallocation and stage routing stay allowed
    assert load_config("paper_28", overrides=["network.span_length_probs=[1.0,0.0]"]).clients.routing == "stage"


def test_unknown_fields_are_refused_with_the_nearest_valid_name():
    with pytest.raises(ConfigError, match=r"market.alhpa = 0.9 is invalid: .*did you mean 'market.alpha'\?"):
        load_config("paper_28", overrides=["+market.alhpa=0.9"])
    with pytest.raises(ConfigError, match="did you mean 'adversary.mix.lazy'"):
        load_config("paper_28", overrides=["+adversary.mix.lazzy=1"])
    assert load_config("paper_28", overrides=["adversary.mix.lazy=1"]).adversary.mix["lazy"] == 1
