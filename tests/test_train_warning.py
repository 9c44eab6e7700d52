"""`router train` on data too small to learn from still trains, but says on stderr that the router will be
unreliable: too few rows, or too few of either outcome."""

from test_cli import cli_env, routeyard

from jobs.cli.context import err
from jobs.cli.options import MIN_TRAIN_ROWS, warn_small_training
from routers.rows import STRONG_WINS, TIE, WEAK_WINS, Preference


def warning_for(labels: list[float]) -> str:
    with err.capture() as captured:
        warn_small_training([Preference(f"prompt {i}", label) for i, label in enumerate(labels)])
    return captured.get()


def test_small_or_one_sided_training_data_is_warned_about_and_enough_is_not():
    assert "only 3 preference rows" in warning_for([STRONG_WINS, WEAK_WINS, TIE]) and "unreliable" in warning_for(
        [STRONG_WINS, WEAK_WINS, TIE])
    one_sided = warning_for([STRONG_WINS] * 95 + [WEAK_WINS] * 5)
    assert "95 rows where the strong model wins and 5 where the weak one does" in one_sided
    assert "preference rows (" not in one_sided  # 100 rows are enough; the balance is what is wrong
    assert warning_for([STRONG_WINS, WEAK_WINS] * (MIN_TRAIN_ROWS // 2) + [TIE]) == ""


def test_router_train_on_a_3_row_csv_warns_on_stderr_and_still_saves(tmp_path):
    data = tmp_path / "tiny.csv"
    data.write_text("prompt,strong,weak\nhi,1,0\nho,0,1\nhu,1,1\n")
    out = routeyard("router", "train", "--router", "random", "--data", str(data), "--out", str(tmp_path / "r"),
                    env=cli_env(tmp_path / "home"))
    assert "only 3 preference rows" in out.stderr and "unreliable" in out.stderr
    assert "saved random router" in out.stdout and (tmp_path / "r" / "config.json").is_file()
