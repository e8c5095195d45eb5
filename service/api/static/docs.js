// Starts Swagger UI on /docs. A file of its own, not an inline script: the page's CSP allows
// scripts from this origin only.
window.ui = SwaggerUIBundle({
  url: document.getElementById("swagger-ui").dataset.spec,
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
});
