"""The gateway's admin site: Django's, plus pages that are not models listed in their app's section of the index."""

from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.admin.utils import flatten_fieldsets
from django.core.exceptions import ValidationError

from gateway_project.passwords import PasswordCheckRefused


class ThrottledLoginForm(AdminAuthenticationForm):
    """The admin's login form; a password the backend would not check yet is a form error saying when to retry."""

    refused: PasswordCheckRefused | None = None

    def clean(self):
        try:
            return super().clean()
        except PasswordCheckRefused as refused:
            self.refused = refused
            raise ValidationError(refused.message, code=refused.type) from None


class GatewayAdminSite(admin.AdminSite):
    login_form = ThrottledLoginForm

    def login(self, request, extra_context=None):
        """Django's login page; answered 429 or 503 with Retry-After when the password was not checked."""
        response = super().login(request, extra_context)
        form = (getattr(response, "context_data", None) or {}).get("form")
        refused = getattr(form, "refused", None)
        if refused is not None:
            response.status_code = refused.status
            response["Retry-After"] = str(refused.retry_after)
            response._has_been_logged = True  # expected under a flood, not an error (see PasswordCheckRefused)
        return response

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


class StaffReadOnlyAdmin(admin.ModelAdmin):
    """A log that every staff member may read and nobody, superusers included, may add to, edit or delete from."""

    def get_readonly_fields(self, request, obj=None):
        return flatten_fieldsets(self.fieldsets) if self.fieldsets else list(self.fields or ())

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_view_permission(self, request, obj=None):
        return request.user.is_active and request.user.is_staff

    def has_module_permission(self, request):
        return request.user.is_active and request.user.is_staff
