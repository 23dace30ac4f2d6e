"""The web interface (docs/web.md): sign-in for the users of C{mailgw user},
and pages for organizations, servers, credentials, domains and the queue,
served by twisted.web from Jinja2 templates on the C{[web]} endpoint."""
