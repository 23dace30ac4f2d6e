"""The web interface's routes: each method and path to its page
(docs/web.md, "Pages")."""
from __future__ import annotations

from mailgw.web.ui.app import route
from mailgw.web.ui.pages import (
    credential_add, credential_hold, credential_remove, credential_remove_form, credentials,
    domain, domain_add, domain_check, domain_remove, domain_verify, domains, organization,
    organization_add, organization_suspend, organizations, server, server_add,
    server_settings, server_suspend,
)
from mailgw.web.ui.people import user_add, user_link, users
from mailgw.web.ui.queue import message, message_action, messages
from mailgw.web.ui.signin import (
    home, login, login_form, logout, set_password, set_password_form,
)

def _bound(fn, *args):
    async def handler(web, visit):
        return await fn(web, visit, *args)
    return handler


S = "/orgs/{org}/servers/{server}"

ROUTES = (
    route("GET", "/", home),
    route("GET", "/login", login_form, login=False),
    route("POST", "/login", login, login=False),
    route("POST", "/logout", logout),
    route("GET", "/set-password", set_password_form, login=False),
    route("POST", "/set-password", set_password, login=False),
    route("GET", "/users", users),
    route("POST", "/users", user_add),
    route("POST", "/users/{user:int}/link", user_link),
    route("GET", "/orgs", organizations),
    route("POST", "/orgs", organization_add),
    route("GET", "/orgs/{org}", organization),
    route("POST", "/orgs/{org}/suspend", _bound(organization_suspend, True)),
    route("POST", "/orgs/{org}/unsuspend", _bound(organization_suspend, False)),
    route("POST", "/orgs/{org}/servers", server_add),
    route("GET", S, server),
    route("POST", S + "/settings", server_settings),
    route("POST", S + "/suspend", _bound(server_suspend, True)),
    route("POST", S + "/unsuspend", _bound(server_suspend, False)),
    route("GET", S + "/credentials", credentials),
    route("POST", S + "/credentials", credential_add),
    route("POST", S + "/credentials/{credential:int}/hold", _bound(credential_hold, True)),
    route("POST", S + "/credentials/{credential:int}/release", _bound(credential_hold, False)),
    route("GET", S + "/credentials/{credential:int}/remove", credential_remove_form),
    route("POST", S + "/credentials/{credential:int}/remove", credential_remove),
    route("GET", S + "/domains", domains),
    route("POST", S + "/domains", domain_add),
    route("GET", S + "/domains/{domain:int}", domain),
    route("POST", S + "/domains/{domain:int}/check", domain_check),
    route("POST", S + "/domains/{domain:int}/verify", domain_verify),
    route("POST", S + "/domains/{domain:int}/remove", domain_remove),
    route("GET", S + "/messages", messages),
    route("GET", S + "/messages/{token:token}", message),
    route("POST", S + "/messages/{token:token}/release", _bound(message_action, "release")),
    route("POST", S + "/messages/{token:token}/retry", _bound(message_action, "retry")),
    route("POST", S + "/messages/{token:token}/remove", _bound(message_action, "remove")),
)
