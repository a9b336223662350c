"""Policy files: YAML documents to validated models, every error located as file:line:col."""
