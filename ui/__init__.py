"""What the pages share: the active experiment and the data, job progress, URL state, charts,
image tiles and hover previews. The page scripts themselves are the files in `pages/`, each
registered with `st.Page` in app.py; nothing here is a page."""
