"""The gateway's admin site: Django's, plus pages that are not models listed in their app's section of the index."""

from django.contrib import admin


class GatewayAdminSite(admin.AdminSite):

    def get_app_list(self, request, app_label=None):
        """The index (and app index): a ModelAdmin's `index_pages(request)` join its app's section."""
        app_list = super().get_app_list(request, app_label)
        for app in app_list:
            for entry in list(app["models"]):
                model_admin = self._registry.get(entry["model"])
                pages = getattr(model_admin, "index_pages", None)
                if pages:
                    app["models"].extend(pages(request))
        return app_list
