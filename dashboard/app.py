"""The dashboard's script, run by Streamlit for each browser session (served by
dashboard/server.py, which `fracture dashboard`/`up` start).

Wires the pages only: context, notice, sign-in check, navigation. The pages live in
dashboard/views.
"""

from __future__ import annotations

import streamlit as st

from dashboard import phone, signin, ui

st.set_page_config(
    page_title="Fracture screening",
    page_icon="🦴",  # drawn in the browser; a :material/…: icon is fetched from a font host
    layout="wide",
    initial_sidebar_state="auto",
)
ui.style()
phone.close_sidebar_after_navigation()
dashboard = ui.dashboard()
ui.notice()
if signin.gate(dashboard):
    signin.sign_out_button(dashboard)
    page = st.navigation(
        [
            st.Page("views/upload.py", title="Upload", icon=":material/upload_file:", default=True),
            st.Page("views/browse.py", title="Browse", icon=":material/table_rows:"),
            st.Page("views/overview.py", title="Overview", icon=":material/monitoring:"),
        ],
        position="top",
    )
    page.run()
