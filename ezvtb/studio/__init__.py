"""`ezvtb studio`: a local web app to pose, puppeteer, preview and generate (needs the ``web`` extra).

`engine` holds the render loop (one core on one thread, never waiting for a browser), `panels` what each
panel does, `options` the core option controls, `server` the FastAPI app, and ``static/`` the page, its
script and the OBS overlay page.
"""
