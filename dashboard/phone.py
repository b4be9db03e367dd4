"""Phone-sized screens: the sidebar closes once a page is picked in it.

Streamlit closes its sidebar after a page link only for a browser that reports a mobile device
(user agent); a narrow window or a phone browser that asks for the desktop site kept it open over
the page it had just opened. A few lines in the page close it there too.
"""

from __future__ import annotations

import streamlit as st

NARROW_PX = 768  # Streamlit's "md" breakpoint: below it the sidebar overlays the page

_SCRIPT = f"""
<script>
(() => {{
  if (window.fxSidebarCloser) return;  // once per page load, not per run
  window.fxSidebarCloser = true;
  const open = () => {{
    const bar = document.querySelector('[data-testid="stSidebar"]');
    if (!bar) return false;
    const box = bar.getBoundingClientRect();
    return box.width > 0 && box.right > 0;
  }};
  document.addEventListener("click", (event) => {{
    if (!event.target.closest('[data-testid="stSidebarNavLink"]')) return;
    if (window.innerWidth > {NARROW_PX}) return;
    // After Streamlit's own handling: a mobile browser has closed it already.
    setTimeout(() => {{
      const close = document.querySelector('button[aria-label="Collapse sidebar"]');
      if (open() && close) close.click();
    }}, 400);
  }}, true);
}})();
</script>
"""


def close_sidebar_after_navigation() -> None:
    """Installs the script (once per page load; each run draws an empty element)."""
    st.html(_SCRIPT, unsafe_allow_javascript=True, width="content")
