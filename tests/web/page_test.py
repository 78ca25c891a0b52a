"""The board's web page in a real browser: headless Chromium driven by Playwright, against a
running `flm-edge serve` whose network is its audio source.

    target/pyclient/bin/python tests/web/page_test.py --url http://127.0.0.1:PORT/ \
        [--wav MIC.wav] --shots DIR
    target/pyclient/bin/python tests/web/page_test.py --captions-only --url ... --shots DIR

With --captions-only (serve replaying a file, as it would step on ALSA devices): the captions
view shows the model's text as it comes, with "local audio" in its health line.

Checks, each with a time limit:
- Captions view (1920x1080): the event stream connects and its health line arrives.
- Talk view: settings are read; Connect gives the handshake; the fake microphone (the WAV,
  or a generated tone sweep) is encoded and sent; the answer's audio is decoded in the page
  (samples that are not silence) and its text shown as captions; meanwhile the captions view
  shows the model's text and the network conversation.
- A second Talk tab is refused (0x05 "busy", close code 1013) and says so.
- Settings: refused while the conversation runs (503), a bad value refused naming its key
  (400), a good one saved (200), each answer shown in the page.
- A page on a non-secure origin (a name mapped to 127.0.0.1) says the microphone is refused;
  a browser without WebCodecs is told so.
- Nothing the pages load comes from another origin; no script error.
Screenshots of both views (kiosk and phone sizes) go to DIR. Prints one summary line; exits
non-zero with the failed check's message.

With --token TOKEN (serve with that `server.token`): the page asks for the token once the
server answers 401 (again after a wrong one), then reads the settings, follows the event
stream and holds a conversation with it; a kiosk opened at `/?token=…` is
never asked, and the token leaves its address bar; a person who cancels the prompt is told
the board needs its token, and is not asked again.
"""

import argparse
import asyncio
import math
import os
import struct
import sys
import time
import urllib.parse
import wave

from playwright.async_api import async_playwright

CHROMIUM = "/usr/bin/chromium"
INSECURE_HOST = "flm-insecure.test"  # mapped to 127.0.0.1: an origin that is not secure


class Failed(Exception):
    pass


def check(ok, what):
    if not ok:
        raise Failed(what)


def make_wav(path, seconds=6.0, rate=48000):
    """A tone sweep with a little noise, 16-bit mono: something for the encoder to chew on."""
    import random

    rnd = random.Random(1)
    frames = bytearray()
    for i in range(int(seconds * rate)):
        t = i / rate
        f = 200 + 600 * (t % 2.0) / 2.0
        x = 0.35 * math.sin(2 * math.pi * f * t) + 0.03 * (rnd.random() - 0.5)
        frames += struct.pack("<h", int(x * 32767))
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(frames))


async def wait_for(page, expr, what, timeout_s):
    """Waits until the JS expression is truthy in the page; fails naming `what` and the
    page's counters otherwise. (Polled from here: the page's Content-Security-Policy forbids
    the string evaluation that Playwright's wait_for_function does in the page.)"""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if await page.evaluate(f"!!({expr})"):
                return
            why = "false"
        except Exception as e:
            why = str(e).splitlines()[0]
        if time.monotonic() > deadline:
            counters = await page.evaluate("JSON.stringify({...window.flm, settings: undefined})")
            raise Failed(f"{what} (not within {timeout_s} s: {why}); the page's counters: {counters}")
        await asyncio.sleep(0.1)


async def run(a):
    base = a.url if a.url.endswith("/") else a.url + "/"
    origin = urllib.parse.urlsplit(base)
    port = origin.port
    os.makedirs(a.shots, exist_ok=True)
    wav = a.wav
    if not wav:
        wav = os.path.join(a.shots, "mic.wav")
        make_wav(wav)
    args = [
        "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={os.path.abspath(wav)}",
        "--autoplay-policy=no-user-gesture-required",
        f"--host-resolver-rules=MAP {INSECURE_HOST} 127.0.0.1",
    ]
    foreign = []  # requests to other origins
    errors = []  # uncaught script errors

    def watch(page, name):
        def on_request(req):
            u = urllib.parse.urlsplit(req.url)
            if u.scheme in ("data", "blob"):
                return
            if (u.hostname, u.port) not in ((origin.hostname, port), (INSECURE_HOST, port)):
                foreign.append(req.url)

        page.on("request", on_request)
        page.on("pageerror", lambda e: errors.append(f"{name}: {e}"))
        # (HTTP errors the page expects, e.g. the settings' 503 and 400, are logged as
        # "Failed to load resource": not script errors.)
        page.on("console", lambda m: errors.append(f"{name}: console: {m.text}")
                if m.type == "error" and "Failed to load resource" not in m.text else None)

    result = {}
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=args, timeout=30000)
        try:
            ctx = await browser.new_context(viewport={"width": 1920, "height": 1080})
            ctx.set_default_timeout(10000)

            # --- the captions view, as a kiosk opens it
            kiosk = await ctx.new_page()
            watch(kiosk, "captions")
            await kiosk.goto(base, wait_until="load")
            await wait_for(kiosk, "flm.view === 'captions' && flm.eventsConnected && flm.healthSeen > 0",
                           "captions view: event stream and health line", 10)
            health = await kiosk.inner_text("#cap-health")
            check("deadline misses" in health, f"captions view: health line reads {health!r}")

            # --- the talk view
            talk = await ctx.new_page()
            await talk.set_viewport_size({"width": 1280, "height": 900})
            watch(talk, "talk")
            await talk.goto(base + "#talk", wait_until="load")
            await wait_for(talk, "flm.view === 'talk' && flm.settings && 'temp_text' in flm.settings",
                           "talk view: settings read from /api/settings", 5)
            check(await talk.is_hidden("#banner"), "talk view: a warning banner on a secure origin: "
                  + await talk.inner_text("#banner"))
            t0 = time.monotonic()
            await talk.click("#connect")
            await wait_for(talk, "flm.handshake", "talk view: handshake (0x00)", 15)
            handshake_s = time.monotonic() - t0
            await wait_for(talk, "flm.packetsSent >= 50 && flm.micPeak > 0.05",
                           "talk view: microphone audio encoded and sent", 10)
            await wait_for(talk, "flm.packetsReceived >= 25 && flm.secondsDecoded >= 1.5 "
                                 "&& flm.outputPeak > 0.01",
                           "talk view: the model's audio received and decoded (not silence)", 20)
            await wait_for(talk, "flm.talkText.trim().length > 0 && "
                                 "document.querySelector('#talk-lines').textContent.trim().length > 0",
                           "talk view: the model's text shown as captions", 20)
            await wait_for(kiosk, "flm.captionText.trim().length > 0 && flm.peer !== '' && "
                                  "document.querySelector('#cap-lines').textContent.trim().length > 0",
                           "captions view: the model's text and the network conversation", 10)
            kiosk_health = await kiosk.inner_text("#cap-health")
            check("network conversation" in kiosk_health,
                  f"captions view: health line during the conversation reads {kiosk_health!r}")

            # --- settings during the conversation: refused (503), shown
            # A value other than the server's (it keeps what earlier runs set).
            temp = await talk.evaluate("flm.settings.temp_text")
            new_temp = "0.3" if abs(temp - 0.3) > 1e-3 else "0.4"
            await talk.click("#settings-box summary")
            await talk.fill("input[name=temp_text]", new_temp)
            await talk.click("#settings button[type=submit]")
            await wait_for(talk, "/busy|disconnect/i.test(flm.settingsStatus)",
                           "settings: refused while a conversation runs", 5)

            # --- a second tab is refused while this one talks
            second = await ctx.new_page()
            await second.set_viewport_size({"width": 1280, "height": 900})
            watch(second, "second tab")
            await second.goto(base + "#talk", wait_until="load")
            await second.click("#connect")
            await wait_for(second, "flm.closeCode === 1013 && /busy/.test(flm.lastError) && !flm.connected",
                           "second tab: refused as busy (0x05, close 1013)", 10)
            shown = await second.inner_text("#talk-error")
            check("busy" in shown, f"second tab: the refusal shown reads {shown!r}")
            await second.screenshot(path=os.path.join(a.shots, "talk-refused.png"))
            await second.close()
            await wait_for(talk, "flm.handshake && flm.connected", "talk view: still connected", 2)

            # --- screenshots during the conversation: kiosk and phone sizes
            await kiosk.bring_to_front()
            await kiosk.screenshot(path=os.path.join(a.shots, "captions-1080p.png"))
            await kiosk.set_viewport_size({"width": 390, "height": 844})
            await kiosk.screenshot(path=os.path.join(a.shots, "captions-phone.png"))
            await talk.bring_to_front()
            await talk.screenshot(path=os.path.join(a.shots, "talk.png"), full_page=True)
            await talk.set_viewport_size({"width": 390, "height": 844})
            await talk.screenshot(path=os.path.join(a.shots, "talk-phone.png"), full_page=True)

            counters = await talk.evaluate("({...flm, settings: undefined})")
            kiosk_counters = await kiosk.evaluate("({...flm, settings: undefined})")

            # --- disconnect; settings: a bad value (400, its key named), then a good one (200)
            await talk.click("#connect")
            await wait_for(talk, "!flm.connected && !flm.handshake", "talk view: disconnected", 5)
            await talk.fill("input[name=top_p_text]", "7")
            # The conversation's end may take a moment to free the settings.
            deadline = time.monotonic() + 10
            while True:
                await talk.click("#settings button[type=submit]")
                await wait_for(talk, "flm.settingsStatus.startsWith('not saved') || "
                                     "flm.settingsStatus.startsWith('saved')",
                               "settings: an answer", 5)
                status = await talk.evaluate("flm.settingsStatus")
                if "busy" not in status or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            check("top_p_text" in status, f"settings: a bad top_p_text: {status!r}")
            await talk.fill("input[name=top_p_text]", "0.9")
            await talk.click("#settings button[type=submit]")
            await wait_for(talk, "flm.settingsStatus.startsWith('saved')", "settings: saved (200)", 5)
            msg = await talk.inner_text("#settings-msg")
            check(msg.startswith("saved"), f"settings: the page shows {msg!r}")

            # --- a non-secure origin: the microphone is refused, and the page says so
            insecure = await ctx.new_page()
            watch(insecure, "insecure")
            await insecure.goto(f"http://{INSECURE_HOST}:{port}/#talk", wait_until="load")
            await wait_for(insecure, "window.flm && flm.secure === false", "insecure origin: page loaded", 5)
            banner = await insecure.inner_text("#banner")
            check(await insecure.is_visible("#banner") and "secure origin" in banner and "tls_cert" in banner,
                  f"insecure origin: the banner reads {banner!r}")
            check(await insecure.is_disabled("#connect"), "insecure origin: Connect is enabled")
            await insecure.screenshot(path=os.path.join(a.shots, "talk-insecure.png"))
            await insecure.close()

            # --- a browser without WebCodecs
            old = await ctx.new_page()
            await old.add_init_script("delete window.AudioEncoder; delete window.AudioDecoder;")
            watch(old, "no webcodecs")
            await old.goto(base + "#talk", wait_until="load")
            await wait_for(old, "window.flm && flm.webcodecs === false", "no WebCodecs: page loaded", 5)
            banner = await old.inner_text("#banner")
            check("WebCodecs" in banner, f"no WebCodecs: the banner reads {banner!r}")
            await old.close()

            # --- the event stream cut: the captions view says so
            cut = await ctx.new_page()
            await cut.set_viewport_size({"width": 1280, "height": 720})
            await cut.route("**/api/events", lambda route: route.abort())
            await cut.goto(base, wait_until="load")
            await wait_for(cut, "window.flm && !flm.eventsConnected && "
                                "/disconnected/.test(document.querySelector('#cap-health').textContent) && "
                                "document.querySelector('#captions-view .state').dataset.state === 'offline'",
                           "event stream cut: the captions view says it is disconnected", 5)
            await cut.close()

            check(not foreign, f"requests to other origins: {foreign}")
            check(not errors, f"script errors: {errors}")
            result = {
                "handshake_s": round(handshake_s, 2),
                "talk": counters,
                "captions": kiosk_counters,
            }
        finally:
            await browser.close()
    return result


BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]


async def run_captions(a):
    """The captions view during a replay through serve: text as it arrives, local audio."""
    base = a.url if a.url.endswith("/") else a.url + "/"
    os.makedirs(a.shots, exist_ok=True)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1920, "height": 1080})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(base + "#captions", wait_until="load")
            await wait_for(page, "window.flm && flm.eventsConnected && flm.healthSeen > 0 && "
                                 "/local audio/.test(document.querySelector('#cap-health').textContent)",
                           "captions view: connected, health line says local audio", 10)
            first = await page.evaluate("flm.captionText.length")
            await wait_for(page, f"flm.captionText.trim().length >= {first} + 20",
                           "captions view: the model's text arrives during the replay", 20)
            await page.screenshot(path=os.path.join(a.shots, "captions-replay.png"))
            check(not errors, f"script errors: {errors}")
            return await page.evaluate("({...window.flm, settings: undefined})")
        finally:
            await browser.close()


async def run_token(a):
    """The page on a board with a token."""
    base = a.url if a.url.endswith("/") else a.url + "/"
    token = a.token
    wav = os.path.join(a.shots, "mic.wav")
    os.makedirs(a.shots, exist_ok=True)
    make_wav(wav, seconds=3.0)
    args = BROWSER_ARGS + [
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={os.path.abspath(wav)}",
        "--autoplay-policy=no-user-gesture-required",
    ]
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            errors = []

            async def open_page(url, answers):
                """A page in a context of its own whose prompts get `answers` in turn (None:
                cancel); returns it and the prompts it showed."""
                ctx = await browser.new_context()
                page = await ctx.new_page()
                asked = []

                async def on_dialog(d):
                    asked.append(d.message)
                    answer = answers[len(asked) - 1] if len(asked) <= len(answers) else None
                    if answer is None:
                        await d.dismiss()
                    else:
                        await d.accept(answer)

                page.on("dialog", on_dialog)
                page.on("pageerror", lambda e: errors.append(str(e)))
                await page.goto(url, wait_until="load")
                return page, asked

            # A wrong token first, then the right one.
            talk, asked = await open_page(base + "#talk", ["wrong-token-0123456789", token])
            await wait_for(talk, "flm.eventsConnected && flm.healthSeen > 0 && flm.settings && "
                                 "'temp_text' in flm.settings",
                           "with the token: the event stream and the settings", 10)
            check(len(asked) == 2 and "refused" in asked[1],
                  f"asked for the token twice (after a wrong one): {asked}")
            await talk.click("#connect")
            await wait_for(talk, "flm.handshake", "with the token: the conversation's handshake", 15)
            await talk.click("#connect")
            await wait_for(talk, "!flm.connected && !flm.handshake", "disconnected", 5)
            check(len(asked) == 2, f"asked again: {asked}")

            # A kiosk started at /?token=…: never asked; the token leaves the address bar.
            kiosk, kiosk_asked = await open_page(base + f"?token={token}#captions", [])
            await wait_for(kiosk, "flm.eventsConnected && flm.healthSeen > 0",
                           "a kiosk at /?token=: the event stream", 10)
            check(not kiosk_asked, f"a kiosk at /?token= was asked: {kiosk_asked}")
            address = await kiosk.evaluate("location.href")
            check("token" not in address, f"the token stays in the address bar: {address}")

            # Cancelled: told so, and not asked again.
            gone, gone_asked = await open_page(base + "#captions", [None])
            await wait_for(gone, "/needs its token/.test(document.querySelector('#cap-health').textContent)",
                           "cancelled: the page says the board needs its token", 10)
            await asyncio.sleep(4)
            check(len(gone_asked) == 1, f"asked again after a cancel: {gone_asked}")
            check(not await gone.evaluate("flm.eventsConnected"), "events without the token")
            check(not errors, f"script errors: {errors}")
            return {"prompts": len(asked) + len(kiosk_asked) + len(gone_asked)}
        finally:
            await browser.close()


def finish(coro, limit_s):
    """Runs the checks within `limit_s`: their result, or None with the failure printed."""
    try:
        return asyncio.run(asyncio.wait_for(coro, timeout=limit_s))
    except Failed as e:
        print(f"page test FAILED: {e}", file=sys.stderr)
    except asyncio.TimeoutError:
        print(f"page test FAILED: the whole run took over {limit_s} s", file=sys.stderr)
    except Exception as e:  # the browser or a page step failed (e.g. no server at --url)
        print(f"page test FAILED: {type(e).__name__}: {str(e).strip()}", file=sys.stderr)
    return None


def main_captions(a):
    t0 = time.monotonic()
    c = finish(run_captions(a), 60)
    if c is None:
        return 1
    print(f"captions test ok in {time.monotonic() - t0:.1f} s: {c['eventsSeen']} events "
          f"({c['healthSeen']} health), {len(c['captionText'])} chars shown, state {c['state']}")
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True, help="the page, e.g. http://127.0.0.1:8991/")
    ap.add_argument("--wav", help="the fake microphone (16-bit WAV); a tone sweep if absent")
    ap.add_argument("--shots", required=True, help="folder for the screenshots")
    ap.add_argument("--captions-only", action="store_true",
                    help="only the captions view, during a replay through serve")
    ap.add_argument("--token", help="the board's server.token: the token checks alone")
    a = ap.parse_args()
    if not os.path.exists(CHROMIUM):
        print(f"page test: {CHROMIUM} is missing", file=sys.stderr)
        return 2
    if a.captions_only:
        return main_captions(a)
    if a.token:
        t0 = time.monotonic()
        r = finish(run_token(a), 90)
        if r is None:
            return 1
        print(f"token test ok in {time.monotonic() - t0:.1f} s: asked after 401, again after a "
              f"wrong token, settings, events and a conversation with it, a kiosk at /?token= not asked, a "
              f"cancel told and not asked again ({r['prompts']} prompts)")
        return 0
    t0 = time.monotonic()
    r = finish(run(a), 100)
    if r is None:
        return 1
    t, c = r["talk"], r["captions"]
    print(
        f"page test ok in {time.monotonic() - t0:.1f} s: talk: handshake {r['handshake_s']} s, "
        f"sent {t['packetsSent']} packets in {t['pagesSent']} pages (mic peak {t['micPeak']:.2f}), "
        f"received {t['packetsReceived']} packets in {t['pagesReceived']} pages, "
        f"{t['samplesDecoded']} samples ({t['secondsDecoded']:.2f} s) decoded "
        f"(peak {t['outputPeak']:.2f}, {t['underruns']} underruns), {len(t['talkText'])} chars of text; "
        f"captions: {c['eventsSeen']} events ({c['healthSeen']} health), "
        f"{len(c['captionText'])} chars shown, state {c['state']}; second tab refused 1013; "
        f"settings 503/400/200 shown; insecure-origin, no-WebCodecs and events-cut notices shown; "
        f"screenshots in {a.shots}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
