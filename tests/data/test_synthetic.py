"""Regime-switching synthetic market, its CSV dumps (tbjax.data.synthetic_dump) and the python -m
tbjax.synth CLI."""

import math

import numpy as np
import pandas as pd
import pytest

from tbjax.data.synthetic import (ANCHOR_ALPHA, REGIME_NAMES, REGIMES, SHOCK_PROBABILITY,
                                  SHOCK_SIZES, STAY_PROBABILITY, Crash, generate_klines)
from tbjax.data.synthetic_dump import write_synthetic_dump
from tbjax.errors import InputError
from tbjax.cli.synth import main

HOUR = 3_600_000
N = 20_000


def expected_return_std(mu_sigma_kappa):
    """Derived here from the model: innovation variance sigma^2 + p E[m^2]; with mean reversion
    x_t = phi x_{t-1} + (1-alpha) b_t and r_t = b_t - kappa x_{t-1}, x independent of b_t."""
    _, sigma, kappa = mu_sigma_kappa
    var_b = sigma**2 + SHOCK_PROBABILITY * sum(m * m for m in SHOCK_SIZES) / len(SHOCK_SIZES)
    phi = (1 - ANCHOR_ALPHA) * (1 - kappa)
    var_x = (1 - ANCHOR_ALPHA) ** 2 * var_b / (1 - phi**2)
    return math.sqrt(var_b + kappa**2 * var_x)


@pytest.mark.parametrize("name", REGIME_NAMES)
def test_forced_regime_moments(name):
    regime = REGIMES[name]
    bars = generate_klines(N, HOUR, seed=3, regime=name)
    assert np.all(bars["regime"] == REGIME_NAMES.index(name))
    log_ret = np.diff(np.log(bars["close"]))
    std = expected_return_std((regime.mu, regime.sigma, regime.kappa))
    assert abs(log_ret.mean() - regime.mu) < 4 * std / math.sqrt(N)
    assert log_ret.std() == pytest.approx(std, rel=0.04)
    assert bars["volume"].mean() == pytest.approx(regime.volume, rel=0.03)
    assert np.all(bars["spread"] == regime.spread)
    if regime.kappa > 0:  # mean reversion: lag-1 autocorrelation of returns clearly negative
        assert np.corrcoef(log_ret[:-1], log_ret[1:])[0, 1] < -0.1


def test_planted_signal_correlation():
    bars = generate_klines(N, HOUR, seed=5, signal_rho=0.2, regime="NORMAL")
    ratio = bars["taker_buy_base"] / bars["volume"]
    next_ret = np.diff(np.log(bars["close"]))
    corr = np.corrcoef(ratio[:-1], next_ret)[0, 1]
    assert corr == pytest.approx(0.2 * 0.010 / expected_return_std((0, 0.010, 0)), abs=0.03)
    np.testing.assert_allclose(ratio[:100], np.clip(ratio[:100], 0.01, 0.99))
    no_signal = generate_klines(N, HOUR, seed=5, signal_rho=0.0, regime="NORMAL")
    r0 = no_signal["taker_buy_base"] / no_signal["volume"]
    assert abs(np.corrcoef(r0[:-1], np.diff(np.log(no_signal["close"])))[0, 1]) < 0.03


def test_bar_consistency_and_markov_persistence():
    bars = generate_klines(50_000, HOUR, seed=11, signal_rho=0.1)
    np.testing.assert_array_equal(bars["open"][1:], bars["close"][:-1])
    assert np.all(bars["high"] >= np.maximum(bars["open"], bars["close"]))
    assert np.all(bars["low"] <= np.minimum(bars["open"], bars["close"]))
    assert np.all(bars["low"] > 0) and np.all(bars["taker_buy_base"] <= bars["volume"])
    np.testing.assert_array_equal(np.diff(bars["open_time"]), HOUR)
    np.testing.assert_array_equal(bars["close_time"], bars["open_time"] + HOUR - 1)
    switches = np.count_nonzero(np.diff(bars["regime"]))
    expected = (1 - STAY_PROBABILITY) * 49_999
    assert abs(switches - expected) < 4 * math.sqrt(expected)
    assert set(np.unique(bars["regime"])) == {0, 1, 2, 3}
    again = generate_klines(50_000, HOUR, seed=11, signal_rho=0.1)
    np.testing.assert_array_equal(again["close"], bars["close"])
    other = generate_klines(50_000, HOUR, seed=11, signal_rho=0.1, stream=1)
    assert not np.array_equal(other["close"], bars["close"])


def test_bad_arguments():
    with pytest.raises(InputError, match="regime 'CALM' is unknown"):
        generate_klines(10, HOUR, 0, regime="CALM")
    with pytest.raises(InputError, match="signal_rho"):
        generate_klines(10, HOUR, 0, signal_rho=1.5)


def test_cli_writes_binance_dumps(tmp_path, capsys):
    out = tmp_path / "raw"
    assert main(["--out", str(out), "--symbols", "2", "--bars", "300", "--timeframe", "4h",
                 "--seed", "7", "--signal", "0.2", "--regime", "choppy_flat"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 2 and "SYN1.csv" in printed[1]
    assert sorted(p.name for p in out.iterdir()) == ["SYN0.csv", "SYN1.csv"]
    frame = pd.read_csv(out / "SYN0.csv", header=None)
    assert frame.shape == (300, 12) and (frame[11] == 0).all()
    expected = generate_klines(300, 4 * HOUR, 7, 0.2, "CHOPPY_FLAT", stream=0)
    np.testing.assert_array_equal(frame[0].to_numpy(), expected["open_time"])
    np.testing.assert_allclose(frame[4].to_numpy(), expected["close"], rtol=1e-11)
    np.testing.assert_array_equal(frame[1].to_numpy()[1:], frame[4].to_numpy()[:-1])
    assert frame[6].iloc[0] == expected["open_time"][0] + 4 * HOUR - 1
    assert frame[0].dtype == np.int64 and frame[8].dtype == np.int64


@pytest.mark.parametrize("argv, message", [
    (["--bars", "10"], "--out"),
    (["--out", "X", "--bars", "10", "--timeframe", "1 hour"], "--timeframe"),
    (["--out", "X", "--bars", "ten"], "--bars"),
    (["--out", "X", "--bars", "10", "--signal", "2"], "--signal"),
    (["--out", "X", "--bars", "10", "--regime", "calm"], "regime 'calm'"),
    (["--out", "X", "--bars", "10", "--seed", "-1"], "--seed must be >= 0, got -1"),
    (["--out", "X", "--bars", "0"], "--bars must be >= 2, got 0"),
    (["--out", "X", "--bars", "10", "--symbols", "0"], "--symbols must be >= 1, got 0"),
    (["--out", "X", "--bars", "10", "--symbols", "-3"], "--symbols must be >= 1, got -3"),
    (["--out", "X", "--bars", "100", "--timeframe", "100000w"], "past the year 9999"),
])
def test_cli_bad_arguments_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "X").exists()


def test_cli_refuses_bars_beyond_memory_before_allocating(capsys, tmp_path, monkeypatch):
    from tbjax.data import synthetic_dump

    monkeypatch.setattr(synthetic_dump, "available_memory_bytes", lambda: 8 * 2**30)
    monkeypatch.setattr(synthetic_dump, "generate_klines", lambda *a, **k: pytest.fail("allocated"))
    assert main(["--out", str(tmp_path / "X"), "--bars", str(10**12)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # 10**12 bars x 400 bytes = 4e14 bytes = 372,529.0 GiB; 8 GiB / 400 bytes = 21,474,836 bars
    assert err == ["error: --bars 1000000000000 needs about 372,529.0 GiB of memory per symbol "
                   "(400 bytes per bar) but 8.0 GiB is available; lower --bars to at most "
                   "21,474,836"]
    assert not (tmp_path / "X").exists()


def test_cli_disk_full_leaves_no_partial_csv(capsys, tmp_path, monkeypatch):
    import errno

    written = []

    def full_disk(path, *args, **kwargs):
        written.append(path)
        with open(path, "w") as handle:
            handle.write("1577836800000,100,")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savetxt", full_disk)
    out = tmp_path / "raw"
    assert main(["--out", str(out), "--bars", "100", "--symbols", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SYN0.csv' failed: the disk is full" in err[0], err
    assert "Traceback" not in err[0] and len(written) == 1
    assert list(out.iterdir()) == []  # no SYN0.csv, no temp file


# ----------------------------------------------------------------------------- the planted tail

TAIL = Crash(prob=0.05, size=0.1, premium=0.006)  # a crash of 10 %: far beyond NORMAL's 1 % bars and 2 % shocks


def _phi(x):
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def test_planted_tail_frequencies_match_the_configured_numbers():
    """On NORMAL (mu 0, sigma 1 %), with the truth (``fragile``: 0 calm, else the level) and with what
    a trader sees (the previous bar's taker-buy ratio), against numbers derived here from the model."""
    n = 300_000
    bars = generate_klines(n, HOUR, seed=8, regime="NORMAL", crash=TAIL)
    f = bars["fragile"].astype(int)
    r = np.diff(np.log(bars["close"]))  # r[t-1] is bar t's log return
    f_bar = f[1:]
    share = TAIL.enter / (TAIL.enter + 1 - TAIL.stay)
    assert (f > 0).mean() == pytest.approx(share, rel=0.1)
    spells = np.count_nonzero(np.diff((f > 0).astype(int)) == -1)
    assert (f > 0).sum() / spells == pytest.approx(1 / (1 - TAIL.stay), rel=0.1)  # mean fragile spell, 25 bars
    assert set(np.unique(f)) == set(range(TAIL.levels + 1))
    crashed = r < -TAIL.size / 2
    assert crashed[f_bar == 0].sum() == 0  # no 5 % drop without the tail
    calm = r[f_bar == 0]
    ratio = bars["taker_buy_base"] / bars["volume"]
    before = ratio[:-1]  # the ratio one bar before each return
    for level in range(1, TAIL.levels + 1):
        at = f_bar == level
        k = at.sum()
        assert k / (f_bar > 0).sum() == pytest.approx(1 / TAIL.levels, abs=0.05)  # levels drawn uniformly
        p = TAIL.prob * level
        assert crashed[at].mean() == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / k))
        se = r[at].std() / math.sqrt(k) + calm.std() / math.sqrt(calm.size)
        assert r[at].mean() - calm.mean() == pytest.approx(TAIL.premium - p * TAIL.size, abs=4 * se)
        # the announcement: the ratio falls by flag x level one bar before the fragile bar
        assert before[at].mean() - before[f_bar == 0].mean() == pytest.approx(-TAIL.flag * level, abs=0.003)
    # what a trader sees: a ratio below 0.5 - flag / 2 announces; the crash frequency after it is
    # sum_L P(L | announced) prob L, Bayes with the ratio's N(0.5 - flag L, 0.1) law per level
    prior = [1 - share] + [share / TAIL.levels] * TAIL.levels
    seen_at = [_phi((TAIL.flag * level - TAIL.flag / 2) / 0.1) for level in range(TAIL.levels + 1)]
    announced = before < 0.5 - TAIL.flag / 2
    for seen, like in ((announced, seen_at), (~announced, [1 - x for x in seen_at])):
        evidence = sum(q * x for q, x in zip(prior, like))
        expected = sum(q * x * TAIL.prob * level for level, (q, x) in enumerate(zip(prior, like))) / evidence
        assert crashed[seen].mean() == pytest.approx(expected, abs=4 * math.sqrt(expected / seen.sum()) + 0.001)
    assert crashed[announced].mean() > 5 * crashed[~announced].mean()


def test_planted_tail_is_deterministic_and_leaves_the_rest_of_the_market():
    a = generate_klines(5_000, HOUR, seed=4, signal_rho=0.2, crash=TAIL)
    b = generate_klines(5_000, HOUR, seed=4, signal_rho=0.2, crash=TAIL)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    plain = generate_klines(5_000, HOUR, seed=4, signal_rho=0.2)
    idle = generate_klines(5_000, HOUR, seed=4, signal_rho=0.2, crash=Crash(prob=0, premium=0, flag=0))
    for key in set(plain) - {"fragile"}:  # spells that do nothing leave the market without a tail, bar for bar
        np.testing.assert_array_equal(plain[key], idle[key])
    assert not plain["fragile"].any() and idle["fragile"].any()
    np.testing.assert_array_equal(idle["fragile"], a["fragile"])  # the spells: the tail's own stream
    with pytest.raises(InputError, match="crash prob must lie in"):
        generate_klines(10, HOUR, 0, crash=Crash(prob=1.5))


def test_cli_crash_flags(tmp_path, capsys):
    out = tmp_path / "raw"
    assert main(["--out", str(out), "--bars", "400", "--seed", "2", "--crash", "0.05", "--crash-size", "0.1",
                 "--crash-premium", "0.006"]) == 0
    frame = pd.read_csv(out / "SYN0.csv", header=None)
    expected = generate_klines(400, HOUR, 2, crash=TAIL)
    np.testing.assert_allclose(frame[4].to_numpy(), expected["close"], rtol=1e-11)
    np.testing.assert_allclose(frame[9].to_numpy(), expected["taker_buy_base"], rtol=1e-11)
    assert "crash 0.05 x level (1..3) of 0.1" in capsys.readouterr().out
    assert main(["--out", str(out), "--bars", "400", "--crash", "2"]) == 2
    assert main(["--out", str(out), "--bars", "400", "--crash", "0.1", "--crash-size", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --crash must lie in [0, 0.333333] (a probability times up to 3 levels), got 2.0",
                   "error: --crash-size must lie in [0, 1], got -1.0"]


def test_library_dump_writes_each_stream_and_checks_before_writing(tmp_path):
    """write_synthetic_dump: symbol k is stream k of the seed with every setting passed through, the
    paths come back in order (and to ``on_written`` as each is done), and a bad setting is refused
    before the folder exists."""
    out = tmp_path / "raw"
    seen = []
    paths = write_synthetic_dump(out, symbols=2, bars=60, timeframe="15m", seed=9, signal=-0.4, regime="ILLIQUID",
                                 crash=TAIL, on_written=seen.append)
    assert paths == seen == [out / "SYN0.csv", out / "SYN1.csv"]
    for k, path in enumerate(paths):
        frame = pd.read_csv(path, header=None)
        expected = generate_klines(60, 15 * 60_000, 9, -0.4, "ILLIQUID", stream=k, crash=TAIL)
        np.testing.assert_array_equal(frame[0].to_numpy(), expected["open_time"])
        for column, key in ((4, "close"), (5, "volume"), (9, "taker_buy_base")):
            np.testing.assert_allclose(frame[column].to_numpy(), expected[key], rtol=1e-11)
    assert not np.allclose(pd.read_csv(paths[0], header=None)[4], pd.read_csv(paths[1], header=None)[4])
    with pytest.raises(InputError, match="--crash-size must lie in"):
        write_synthetic_dump(tmp_path / "never", symbols=1, bars=10, crash=Crash(size=2.0))
    with pytest.raises(InputError, match="--symbols must be >= 1, got 0"):
        write_synthetic_dump(tmp_path / "never", symbols=0, bars=10)
    assert not (tmp_path / "never").exists()


def test_command_and_library_write_the_same_bytes(tmp_path, capsys):
    """The flags reach write_synthetic_dump as the same settings: byte-identical files."""
    assert main(["--out", str(tmp_path / "cli"), "--symbols", "2", "--bars", "200", "--timeframe", "4h", "--seed", "5",
                 "--signal", "0.25", "--regime", "strong_trend", "--crash", "0.05", "--crash-size", "0.1",
                 "--crash-premium", "0.006", "--crash-levels", "2"]) == 0
    write_synthetic_dump(tmp_path / "lib", symbols=2, bars=200, timeframe="4h", seed=5, signal=0.25,
                         regime="strong_trend", crash=Crash(prob=0.05, size=0.1, premium=0.006, levels=2))
    for name in ("SYN0.csv", "SYN1.csv"):
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "lib" / name).read_bytes()
