import pytest

from regptq_lite.atomic import write_atomic


def test_a_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "result.json"
    target.write_text("old")

    def fail(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_a_finished_write_replaces_the_file(tmp_path):
    target = tmp_path / "result.json"
    assert write_atomic(target, lambda tmp: tmp.write_text("new")) == target
    assert target.read_text() == "new"


@pytest.mark.parametrize("fails", [False, True])
def test_a_users_own_tmp_file_is_never_touched(tmp_path, fails):
    target, users = tmp_path / "result.json", tmp_path / "result.json.tmp"
    users.write_text("the user's")

    def write(tmp):
        tmp.write_text("new")
        if fails:
            raise KeyboardInterrupt

    if fails:
        with pytest.raises(KeyboardInterrupt):
            write_atomic(target, write)
    else:
        write_atomic(target, write)
    assert users.read_text() == "the user's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"] * (not fails) + ["result.json.tmp"]


def test_a_link_keeps_its_link_and_the_file_it_points_to_is_replaced(tmp_path):
    real, link = tmp_path / "real.json", tmp_path / "link.json"
    real.write_text("old")
    link.symlink_to(real)
    assert write_atomic(link, lambda tmp: tmp.write_text("new")) == link
    assert link.is_symlink() and real.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "real.json"]
