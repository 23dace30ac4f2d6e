"""The web interface in a real browser: headless Chromium (Debian's
C{chromium} and C{chromium-driver}) driven by Selenium against the real
``twistd -n mailgw``, and the credential made in the page used by smtplib
over real STARTTLS.

One gateway and one browser serve the whole module. Each page's screenshot
is written to C{browser-screenshots/} in trial's working folder
(C{_trial_temp}); C{docs/web.md} shows a few of them.
"""
from __future__ import annotations

import atexit
import os
import re
import shutil
import smtplib
import ssl
import subprocess
import sys
import tempfile
import time

from twisted.trial import unittest

from mailgw.admin.devsetup import make_certificate
from tests.e2e.gateway import ROOT, Gateway, mailgw_cli, require_tool, write_config

PASSWORD = "a browser test password"
ADMIN, BOB = "admin@example.com", "bob@other.example"
#: how long a page may take to show what a test waits for
WAIT = 20
QUEUED = re.compile(r"^OK: queued as ([A-Z0-9]{12})$")


def cli_with_password(config: str, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "mailgw.admin.cli", "--config", config, *args,
                    "--password-stdin"], input=PASSWORD + "\n", text=True, check=True,
                   capture_output=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))


class BrowserCase(unittest.TestCase):
    """A gateway with the web interface and one headless Chromium, shared
    by the tests of a class (L{start_shared} makes them)."""

    #: tests still to run before the shared gateway and browser stop
    _remaining = None

    def setUp(self):
        # trial has no setUpClass: the first test starts what every test
        # shares, the last one's cleanup stops it (and, should a run select
        # only some tests, the end of the process does)
        cls = type(self)
        if cls._remaining is None:
            cls._remaining = len([n for n in dir(cls) if n.startswith("test_")
                                  and callable(getattr(cls, n))])
            atexit.register(cls.stop_shared)
            cls.start_shared()
        self.addCleanup(self._one_done)
        self.addCleanup(self.evidence)

    def evidence(self):
        """The page each test ended on, screenshot and source, to read
        when it failed."""
        if getattr(self, "browser", None) is None:
            return
        name = os.path.join(self.shots, "last-" + self._testMethodName)
        self.browser.save_screenshot(name + ".png")
        with open(name + ".html", "w", encoding="utf-8") as f:
            f.write(self.browser.page_source)

    @classmethod
    def _one_done(cls):
        cls._remaining -= 1
        if cls._remaining == 0:
            cls.stop_shared()

    @classmethod
    def start_shared(cls):
        raise NotImplementedError

    @classmethod
    def require_browser(cls):
        """@return: the paths of chromium and chromedriver (skipped without
        them or Selenium, failing under CI=true)."""
        chromium = shutil.which("chromium") or require_tool("chromium")
        driver_path = shutil.which("chromedriver") or require_tool("chromedriver")
        try:
            import selenium  # noqa: F401
        except ImportError:
            if os.environ.get("CI") == "true":
                raise AssertionError("selenium is not installed (CI=true: fails)") from None
            raise unittest.SkipTest("selenium is not installed") from None
        return chromium, driver_path

    @classmethod
    def open_shared(cls, gateway, listeners: int):
        """Start C{gateway} (with C{listeners} SMTP listeners) and the
        browser the class's tests share; the gateway stops if the browser
        does not start."""
        cls.gateway = gateway
        gateway.start(listeners)
        cls.base = f"http://127.0.0.1:{gateway.web_port}"
        try:
            cls.browser = cls.new_browser()
        except Exception:
            gateway.stop()
            raise

    @classmethod
    def new_browser(cls):
        """Headless Chromium under Selenium."""
        from selenium import webdriver
        chromium, driver_path = cls.require_browser()
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--disable-gpu", "--window-size=1280,900", "--no-first-run"):
            options.add_argument(argument)
        service = webdriver.ChromeService(executable_path=driver_path,
                                          log_output=os.path.join(cls.folder, "driver.log"))
        browser = webdriver.Chrome(options=options, service=service)
        browser.set_page_load_timeout(WAIT)
        return browser

    @classmethod
    def stop_shared(cls):
        browser, cls.browser = getattr(cls, "browser", None), None
        if browser is not None:
            browser.quit()
        gateway, cls.gateway = getattr(cls, "gateway", None), None
        if gateway is not None:
            gateway.stop()

    # -- helpers ---------------------------------------------------------------------

    def by(self):
        from selenium.webdriver.common.by import By
        return By

    def open(self, path: str):
        self.browser.get(self.base + path)

    def find(self, css: str):
        return self.browser.find_element(self.by().CSS_SELECTOR, css)

    def find_all(self, css: str):
        return self.browser.find_elements(self.by().CSS_SELECTOR, css)

    def wait_for_text(self, text: str):
        """Poll the page (deadline L{WAIT}) until it shows C{text}."""
        deadline = time.monotonic() + WAIT
        while text not in self.find("body").text:
            if time.monotonic() > deadline:
                self.fail(f"the page never showed {text!r}:\n{self.find('body').text}")
            time.sleep(0.05)

    def fill(self, form: str, **fields):
        for name, value in fields.items():
            element = self.find(f"{form} [name={name}]")
            if element.tag_name == "select":
                from selenium.webdriver.support.select import Select
                Select(element).select_by_visible_text(value)
            elif element.get_attribute("type") == "checkbox":
                if bool(value) != element.is_selected():
                    element.click()
            else:
                element.clear()
                element.send_keys(value)

    def submit(self, form: str, **fields):
        self.fill(form, **fields)
        self.click(self.find(f"{form} button[type=submit]"))

    def click(self, element):
        """Click C{element} and wait until the page it leads to has loaded:
        the old page's window carries a mark, the new one does not. (Asking
        whether the old page's elements went stale races with the document
        being replaced: chromedriver may answer with another error.)"""
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.support.wait import WebDriverWait
        self.browser.execute_script("window.mailgwOldPage = true;")
        element.click()

        def loaded(browser):
            return browser.execute_script(
                "return window.mailgwOldPage === undefined && "
                "document.readyState === 'complete';")
        WebDriverWait(self.browser, WAIT, poll_frequency=0.05,
                      ignored_exceptions=(WebDriverException,)).until(loaded)

    def shot(self, name: str):
        self.browser.save_screenshot(os.path.join(self.shots, f"{name}.png"))

    def sign_in(self, email: str, password: str = PASSWORD):
        self.browser.delete_all_cookies()
        self.open("/login")
        self.submit("form[action='/login']", email=email, password=password)

    def title(self) -> str:
        return self.find("h1").text

    def smtp(self):
        client = smtplib.SMTP("127.0.0.1", self.gateway.port("starttls"), timeout=30)
        self.addCleanup(client.close)
        client.ehlo("browser.test")
        client.starttls(context=ssl.create_default_context(cafile=self.cafile))
        client.ehlo("browser.test")
        return client

    def send(self, key: str, subject: str) -> str:
        """One message with C{key} (AUTH PLAIN, any user name): the queue id."""
        client = self.smtp()
        code, text = client.login("any", key)
        self.assertEqual((code, text), (235, b"Granted for acme/web"))
        client.mail("app@acme.example")
        client.rcpt("someone@dest.example")
        code, text = client.data(f"From: app@acme.example\r\nTo: someone@dest.example\r\n"
                                 f"Subject: {subject}\r\n\r\nHello.\r\n".encode())
        self.assertEqual(code, 250, text)
        client.quit()
        return QUEUED.match(text.decode()).group(1)


class BrowserTests(BrowserCase):
    """Journeys through the pages, as an admin and as a user of another
    organization."""

    _remaining = None

    @classmethod
    def start_shared(cls):
        cls.require_browser()
        cls.folder = os.path.abspath(tempfile.mkdtemp(prefix="browser-", dir="."))
        cls.shots = os.path.abspath("browser-screenshots")
        os.makedirs(cls.shots, exist_ok=True)
        certificate, key = make_certificate("localhost")
        cls.cafile = os.path.join(cls.folder, "cert.pem")
        with open(cls.cafile, "wb") as f:
            f.write(certificate)
        with open(os.path.join(cls.folder, "key.pem"), "wb") as f:
            f.write(key)
        cls.config = write_config(
            cls.folder, database_url="sqlite:mailgw.sqlite3", hostname="localhost",
            listeners=[{"endpoint": "tcp:0:interface=127.0.0.1", "tls": "starttls"}],
            tls={"certificate": "cert.pem", "private_key": "key.pem"},
            tables='[web]\nendpoint = "tcp:0:interface=127.0.0.1"\n')
        mailgw_cli(cls.config, "--json", "org", "add", "other", "--name", "Other Ltd")
        cli_with_password(cls.config, "user", "add", ADMIN, "--admin")
        cli_with_password(cls.config, "user", "add", BOB, "--org", "other")
        cls.open_shared(Gateway(cls.folder, cls.config, web=True), 1)

    # -- the journeys --------------------------------------------------------------------

    def test_from_sign_in_to_a_working_credential(self):
        self.browser.delete_all_cookies()
        self.open("/login")
        self.shot("00-sign-in")
        self.sign_in(ADMIN)
        self.assertEqual(self.title(), "Organizations")
        self.shot("01-organizations-list")
        self.submit("form[action='/orgs']", permalink="acme", name="Acme Ltd")
        self.wait_for_text("Organization acme added.")
        self.shot("01-organization")
        self.submit("form[action='/orgs/acme/servers']", permalink="web", name="Web app")
        self.wait_for_text("Server acme/web added.")
        self.shot("02-server-credentials-empty")
        base = "/orgs/acme/servers/web"
        self.click(self.find("nav.tabs a[href$='/domains']"))
        self.submit(f"form[action='{base}/domains']", name="acme.example")
        self.wait_for_text("Domain acme.example added")
        self.assertIn("mailgw-verification", self.find("table.records").text)
        self.shot("03-domain-dns-records")
        self.click(self.find("input[name=force] ~ button"))
        self.wait_for_text("Domain acme.example is verified.")
        # the seed's page: Credentials > Add a Credential > copy the key
        self.click(self.find("nav.tabs a[href$='/credentials']"))
        self.submit(f"form[action='{base}/credentials']", type="smtp", name="app")
        self.wait_for_text("Added smtp credential app.")
        [row] = self.find_all("table.credentials tbody tr[data-type=smtp]")
        key = row.find_element(self.by().CSS_SELECTOR, "code.key").text
        self.assertRegex(key, r"^[A-Za-z0-9]{24}$")
        copy = row.find_element(self.by().CSS_SELECTOR, "button.copy")
        copy.click()
        deadline = time.monotonic() + WAIT
        while copy.text == "Copy" and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertIn(copy.text, ("Copied", "Selected: press Ctrl+C"))
        for shown in ("acme/web", "acme_web", "PLAIN, LOGIN, CRAM-MD5",
                      f"Port {self.gateway.port('starttls')}", "STARTTLS"):
            self.assertIn(shown, self.find("table.settings").text)
        self.shot("04-credentials")
        token = self.send(key, "first")
        self.assertEqual(mailgw_cli(self.config, "--json", "queue", "show", token)["entries"][0]
                         ["status"], "queued")
        # hold the credential in the page: the next message is held
        self.click(row.find_element(self.by().CSS_SELECTOR, "button[name=hold]"))
        self.wait_for_text("Credential app held.")
        held = self.send(key, "second")
        self.assertEqual(mailgw_cli(self.config, "--json", "queue", "show", held)["entries"][0]
                         ["status"], "held")
        self.click(self.find("nav.tabs a[href$='/messages']"))
        self.submit(f"form[action='{base}/messages']", status="held")
        rows = self.find("table.messages tbody").text
        self.assertIn(held, rows)
        self.assertNotIn(token, rows)
        self.shot("05-messages-held")
        self.click(self.find(f"a[href$='/messages/{held}']"))
        self.assertIn("Subject: second", self.find("pre.headers").text)
        self.shot("06-message")
        self.click(self.find(f"form[action$='/messages/{held}/release'] button"))
        self.wait_for_text("1 entries released")
        self.assertEqual(mailgw_cli(self.config, "--json", "queue", "show", held)["entries"][0]
                         ["status"], "queued")
        self.click(self.find("nav.tabs a[href='" + base + "']"))
        self.assertEqual(self.title(), "Web app")
        self.shot("07-server-settings")
        self.click(self.find("header a[href='/users']"))
        self.assertIn(BOB, self.find("table.users").text)
        self.shot("10-users")

    def test_another_organizations_user_sees_nothing_of_it(self):
        mailgw_cli(self.config, "--json", "org", "add", "hidden")
        mailgw_cli(self.config, "--json", "server", "add", "hidden/mail")
        secret = mailgw_cli(self.config, "--json", "credential", "add", "hidden/mail",
                            "--type", "smtp")["key"]
        self.sign_in(BOB)
        self.assertEqual(self.title(), "Organizations")
        self.assertIn("other", self.find("table").text)
        self.assertNotIn('"/orgs/hidden"', self.browser.page_source)
        for path in ("/orgs/hidden", "/orgs/hidden/servers/mail",
                     "/orgs/hidden/servers/mail/credentials",
                     "/orgs/hidden/servers/mail/domains", "/orgs/hidden/servers/mail/messages"):
            self.open(path)
            self.assertEqual(self.title(), "Not found", path)
            self.assertNotIn(secret, self.browser.page_source)
        self.shot("08-other-organization-not-found")

    def test_a_form_without_its_csrf_token_is_refused(self):
        self.sign_in(BOB)
        self.open("/orgs")
        self.browser.execute_script(
            "document.querySelector(\"form[action='/orgs'] input[name=csrf_token]\").remove()")
        self.submit("form[action='/orgs']", permalink="forged")
        self.assertEqual(self.title(), "Forbidden")
        self.assertIn("did not come from this site", self.find("main").text)
        orgs = [o["permalink"] for o in mailgw_cli(self.config, "org", "list", "--json")]
        self.assertNotIn("forged", orgs)

    def test_ten_wrong_passwords_lock_the_address_out(self):
        self.addCleanup(self.clear_lockout)
        for attempt in range(1, 11):
            self.sign_in(BOB, "not the password")
            expected = "Too many attempts" if attempt == 10 else "Sign in"
            self.assertEqual(self.title(), expected, f"attempt {attempt}")
        self.sign_in(BOB)
        self.assertEqual(self.title(), "Too many attempts")
        self.assertIn("Too many failed sign-ins", self.find("main").text)
        self.shot("09-locked-out")
        self.assertIn("Authentication failure for 127.0.0.1 (web sign-in, user "
                      f'"{BOB}")', self.gateway.log())
        self.assertNotIn("not the password", self.gateway.log())

    def clear_lockout(self):
        """`mailgw throttle clear`, then poll until sign-in works again."""
        mailgw_cli(self.config, "--json", "throttle", "clear", "127.0.0.1")
        deadline = time.monotonic() + WAIT
        while True:
            self.sign_in(BOB)
            if self.title() == "Organizations":
                return
            if time.monotonic() > deadline:
                self.fail("the lock-out was never lifted")
            time.sleep(0.2)


class MakeRunTests(BrowserCase):
    """The README's promise: from `make run`'s printed link to a working
    credential, in the browser alone, on a gateway with make run's own config."""

    _remaining = None

    @classmethod
    def start_shared(cls):
        cls.require_browser()
        from mailgw.admin.devsetup import CONFIG_TEMPLATE
        from tests.e2e.test_startup import free_port
        cls.folder = os.path.abspath(tempfile.mkdtemp(prefix="make-run-", dir="."))
        cls.shots = os.path.abspath("browser-screenshots")
        os.makedirs(cls.shots, exist_ok=True)
        var = os.path.join(cls.folder, "var")
        os.makedirs(var)
        config = CONFIG_TEMPLATE
        for port in ("2525", "2465", "9091", "8025", "8080"):
            config = config.replace(f"tcp:{port}:", f"tcp:{free_port()}:")
        cls.config = os.path.join(var, "mailgw.toml")
        with open(cls.config, "w") as f:
            f.write(config)
        setup = subprocess.run(
            [sys.executable, "-m", "mailgw.admin.devsetup", "--config", "var/mailgw.toml"],
            cwd=cls.folder, capture_output=True, text=True, timeout=120,
            env=dict(os.environ, PYTHONPATH=ROOT))
        assert setup.returncode == 0, setup.stderr
        cls.printed = setup.stdout
        cls.cafile = os.path.join(var, "tls", "cert.pem")
        cls.open_shared(Gateway(var, cls.config, http_api=True, web=True), 2)

    def test_from_the_printed_link_to_sent_mail(self):
        [link] = re.findall(r"(?m)^  (http://127\.0\.0\.1:\d+/set-password\?token=\S+)$",
                            self.printed)
        self.assertTrue(link.startswith(self.base + "/set-password?token="), link)
        self.browser.delete_all_cookies()
        self.browser.get(link)
        self.assertEqual(self.title(), "Set a password for admin@example.com")
        self.submit("form[action='/set-password']", password=PASSWORD, confirm=PASSWORD)
        self.wait_for_text("Password set. Sign in with it.")
        self.submit("form[action='/login']", email="admin@example.com", password=PASSWORD)
        self.click(self.find("a[href='/orgs/demo']"))
        self.click(self.find("a[href='/orgs/demo/servers/main/credentials']"))
        self.submit("form[action='/orgs/demo/servers/main/credentials']", type="smtp",
                    name="my app")
        self.wait_for_text("Added smtp credential my app.")
        key = self.find("tr[data-type=smtp]:last-child code.key").text
        client = self.smtp()
        self.assertEqual(client.login("any", key), (235, b"Granted for demo/main"))
        client.mail("you@example.com")
        client.rcpt("someone@example.net")
        code, text = client.data(b"From: you@example.com\r\nSubject: hi\r\n\r\nHello.\r\n")
        self.assertEqual(code, 250, text)
        client.quit()
