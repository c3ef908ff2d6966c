// Inside the Airflow UI the page is an iframe sandboxed without top navigation, so a target=_top link does
// nothing. The UI is a single-page app of the same origin: push the URL onto its history and tell its router.
// Opened by itself (no parent), the link navigates as any link does.
document.addEventListener("click", (event) => {
  const link = event.target.closest && event.target.closest("a[data-airflow]");
  if (!link || window.top === window) return;
  try {
    const top = window.top;
    const url = new URL(link.getAttribute("href"), top.location.href);
    if (url.origin !== top.location.origin) return;
    event.preventDefault();
    top.history.pushState(null, "", url.pathname + url.search + url.hash);
    top.dispatchEvent(new PopStateEvent("popstate", {state: null}));
  } catch (err) {
    // another origin: the default (blocked by the sandbox, but never a wrong page)
  }
});
