// Light or dark: inside the Airflow UI, the UI's own colour mode (its <html class="dark|light">, set by its theme
// switch, same origin), followed when it changes; opened by itself, the system's (prefers-color-scheme). The
// choice is <html data-theme>, which the CSS reads; a change fires "md-theme" (the charts redraw).
(() => {
  const system = window.matchMedia("(prefers-color-scheme: dark)");
  function airflowMode() {
    try {
      if (window.top === window) return null;
      const classes = window.top.document.documentElement.classList;
      return classes.contains("dark") ? "dark" : classes.contains("light") ? "light" : null;
    } catch (err) {
      return null;  // another origin: the system's
    }
  }
  function apply() {
    const mode = airflowMode() || (system.matches ? "dark" : "light");
    if (document.documentElement.dataset.theme !== mode) {
      document.documentElement.dataset.theme = mode;
      document.dispatchEvent(new Event("md-theme"));
    }
  }
  apply();
  system.addEventListener("change", apply);
  try {
    if (window.top !== window) {
      new window.top.MutationObserver(apply).observe(window.top.document.documentElement,
                                                     {attributes: true, attributeFilter: ["class"]});
    }
  } catch (err) {
    // another origin: the system's
  }
})();
