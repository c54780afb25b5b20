// Swagger UI for this gateway's OpenAPI document, from files the gateway serves (no CDN).
// "Authorize" takes an API key (sk-stratus-...) or an OIDC token, sent as a bearer token.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  persistAuthorization: false,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
});
