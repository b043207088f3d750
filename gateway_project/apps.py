from django.contrib.admin.apps import AdminConfig


class GatewayAdminConfig(AdminConfig):
    """django.contrib.admin with the gateway's site as admin.site (Django's documented way to replace it)."""

    default_site = "gateway_project.admin_site.GatewayAdminSite"
