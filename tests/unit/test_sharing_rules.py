"""The sharing settings as JupyterHub roles and scopes (``hubconfig.sharing_roles``,
``server_token_scopes``), and who may share (``api.sharing.refusal``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from gpulab.hub.api.sharing import refusal
from gpulab.hub.hubconfig import server_token_scopes, sharing_roles
from gpulab.hub.settings import SettingsError, load_settings
from gpulab.hub.settings.sections import SharingSettings


def scopes_of(roles: list[dict], name: str) -> set[str]:
    return set(next(r for r in roles if r["name"] == name)["scopes"])


def test_by_default_every_user_shares_their_own_servers_and_lists_nobody():
    roles = sharing_roles(SharingSettings())
    assert [r["name"] for r in roles] == ["user"]
    assert scopes_of(roles, "user") == {"self", "shares!user", "read:shares!user"}
    token = set(server_token_scopes(SharingSettings()))
    assert {"shares!server", "read:shares!server", "access:servers!server"} <= token
    assert not any(s.startswith(("list:", "read:users:name")) for s in token)


def test_group_rule_gives_the_scopes_to_those_groups_only():
    roles = sharing_roles(SharingSettings(groups=["research", "ops"]))
    assert scopes_of(roles, "user") == {"self"}
    (sharers,) = [r for r in roles if r["name"] == "gpulab-sharing"]
    assert sharers["groups"] == ["research", "ops"]
    assert set(sharers["scopes"]) == {"shares!user", "read:shares!user"}


def test_turned_off_nobody_gets_share_scopes_and_the_directory_is_separate():
    roles = sharing_roles(SharingSettings(enabled=False, groups=["research"]))
    assert [r["name"] for r in roles] == ["user"]
    assert scopes_of(roles, "user") == {"self"}
    roles = sharing_roles(SharingSettings(enabled=False, user_directory=True))
    assert {"list:users", "read:users:name", "list:groups"} <= scopes_of(roles, "user")


def owner(name: str, *groups: str):
    return SimpleNamespace(name=name, groups=[SimpleNamespace(name=g) for g in groups])


def test_refusal_says_why_and_names_the_setting():
    settings = SimpleNamespace(sharing=SharingSettings())
    assert refusal(settings, owner("ann")) == ""
    settings.sharing = SharingSettings(groups=["research"])
    assert refusal(settings, owner("ann", "research", "x")) == ""
    message = refusal(settings, owner("bo", "ops"))
    assert "research" in message and "bo is not one" in message
    settings.sharing = SharingSettings(enabled=False)
    assert "sharing.enabled" in refusal(settings, owner("ann"))


@pytest.mark.parametrize("value", ["10s", "400d", "soon"])
def test_max_expiry_out_of_bounds_is_refused(tmp_path, value):
    path = tmp_path / "gpulab.yaml"
    path.write_text(f"sharing:\n  max_expiry: {value}\n")
    with pytest.raises(SettingsError, match="sharing.max_expiry"):
        load_settings(path, environ={})
